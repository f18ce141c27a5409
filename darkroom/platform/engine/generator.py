"""`ImageGenerator`: the one class that turns request rows into image rows, used by batch jobs
(inside a Ray Data actor) and by Ray Serve (inside a replica).

It loads a pipeline once; each `generate` call prepares its rows (`prepare.RowPreparer`, the
family's rules), groups them by settings, runs each group as one pipeline call (halving it on
GPU out-of-memory), and returns one image row per request row in the Parquet columns of
`records.IMAGE_SCHEMA`, plus `error`, which is null unless that row could not be generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from darkroom.platform.engine.autobatch import BatchSizeMemory, chunks
from darkroom.platform.engine.outputs import Provenance, error_row, image_row
from darkroom.platform.engine.prepare import DEFAULTS, RowPreparer
from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.errors import UserError
from darkroom.platform.families.calling import (
    Batch,
    Request,
    Settings,
    StepCallback,
    step_hooks,
    thaw,
)
from darkroom.platform.families.conditioning import RowError
from darkroom.platform.models.adapters import Adapters
from darkroom.platform.models.caching import cache_scope
from darkroom.platform.models.loading import LoadedModel, load_model, resolve_device
from darkroom.platform.models.runtime import (
    RuntimeSpec,
    apply_options,
    configure_threads,
    denoiser,
)
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import (
    SamplerSpec,
    build_scheduler,
    scheduler_config_json,
)

Member = tuple[int, Request, RequestRow]  # (position in the call, request, its row)


class ImageGenerator:
    """Loads a pipeline once; each `generate` call turns request rows into image rows."""

    def __init__(
        self,
        model: ModelSpec | Mapping[str, Any],
        sampler: SamplerSpec | Mapping[str, Any] | None = None,
        runtime: RuntimeSpec | Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        preload_adapters: bool = True,
    ) -> None:
        import torch

        self.spec = ModelSpec.model_validate(model)
        self.runtime = RuntimeSpec.model_validate(runtime or {})
        self.device = resolve_device(self.runtime.device)
        configure_threads(self.runtime, self.device)
        self.loaded: LoadedModel = load_model(self.spec, self.device)
        self.pipe = self.loaded.pipe
        self.family = self.loaded.family
        self.adapters = self._load_adapters(preload_adapters)
        apply_options(self.pipe, self.runtime, self.family)
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        kind = self.family.sampler_kind(self.base_scheduler_config)
        fitting = self.family.fitting(kind)
        default_sampler = SamplerSpec.model_validate(sampler or {})
        if sampler is None and default_sampler.name not in fitting:
            # no sampler asked for: the first that fits (flow_euler for flow models)
            default_sampler = SamplerSpec(name=fitting[0])
        names, classes = (self.family.class_table(self.pipe) if self.family.class_table
                          else (None, None))
        self.rows = RowPreparer(
            spec=self.spec, family=self.family, grid=self.family.grid(self.pipe),
            sampler=default_sampler, fitting=fitting, defaults={**DEFAULTS, **(defaults or {})},
            pipeline_class=type(self.pipe), class_names=names, classes=classes,
        )
        self._schedulers: dict[tuple, tuple[Any, str]] = {}
        self._batch_memory = BatchSizeMemory()
        self.provenance = Provenance.of(self.spec, self.loaded, self.runtime, self.device,
                                        torch.__version__)
        self.warm_up_seconds = 0.0  # the compile's cold start, for benchmarks and logs
        if self.runtime.torch_compile or self.runtime.compile_regions:
            started = time.perf_counter()
            self.warm_up()
            self.warm_up_seconds = time.perf_counter() - started

    @property
    def sampler(self) -> SamplerSpec:
        """The default sampler of rows that name none."""
        return self.rows.sampler

    @property
    def native_size(self) -> int:
        """The side of the model's native image size."""
        return int(self.rows.grid.native or 0)

    @property
    def fitting_samplers(self) -> list[str]:
        """The samplers this model can run."""
        return self.rows.fitting

    def warm_up(self) -> None:
        """One small call so compilation (or lazy init) happens now, not on the first request."""
        from darkroom.platform.data.records import encode_png

        row: dict[str, Any] = {"seed": 0, "prompt": "warm-up", "class_label": "0", "steps": 2}
        if self.family.conditioning.name == "text+control":
            import numpy as np

            row["control_image"] = encode_png(np.zeros((8, 8, 3), np.uint8))
        self.generate([row])

    def generate(self, rows: Sequence[RequestRow | Mapping[str, Any]],
                 on_step: Callable[[list[RequestRow]], StepCallback] | None = None
                 ) -> list[dict[str, Any]]:
        """Image rows for request rows, in the same order; failed rows carry `error`.

        A row that cannot be prepared, or whose group's call raises an unexpected error, fails
        alone (its `error` says why); the other rows are still generated. `on_step(rows)`: the
        step callback of each pipeline call, given the rows of that call (see
        `calling.step_hooks`); pipelines that take no step callback run without one."""
        results: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[Settings, list[Member]] = {}
        for index, record in enumerate(rows):
            try:
                row = self.rows.row(record)
                settings, request = self.rows.prepare(row)
            except (RowError, UserError) as err:
                results[index] = error_row(record, self.provenance, self.sampler.name, str(err))
                continue
            groups.setdefault(settings, []).append((index, request, row))
        for settings, members in groups.items():
            for chunk in chunks(members, self._batch_limit(settings)):
                for index, out in self._run_splitting(settings, chunk, on_step):
                    results[index] = out
        return results  # type: ignore[return-value]

    # -- adapters and schedulers ---------------------------------------------------------------

    def _load_adapters(self, preload: bool) -> Adapters | None:
        """The model's adapters: all loaded now, or (serve) each when first asked for."""
        if not self.spec.loras:
            return None
        adapters = Adapters(self.pipe, self.spec.allow_pickle, fuse=self.runtime.fuse_lora)
        for lora in self.spec.loras if preload else ():
            adapters.load(lora)
        return adapters

    def _scheduler(self, settings: Settings) -> tuple[Any, str]:
        key = (settings.sampler, settings.sampler_overrides)
        if key not in self._schedulers:
            spec = SamplerSpec(name=settings.sampler, overrides=thaw(settings.sampler_overrides))
            scheduler = build_scheduler(spec, self.base_scheduler_config)
            self._schedulers[key] = (scheduler, scheduler_config_json(scheduler))
        return self._schedulers[key]

    # -- groups -> images ----------------------------------------------------------------------

    def _batch_key(self, settings: Settings) -> str:
        return "|".join([self.provenance.columns["device"], self.spec.label,
                         self.loaded.revision, self.runtime.recorded(),
                         f"{settings.width}x{settings.height}"])

    def _batch_limit(self, settings: Settings) -> int | None:
        if self.runtime.batch_size == "auto":
            return self._batch_memory.get(self._batch_key(settings))
        return self.runtime.batch_size

    def _run_splitting(self, settings: Settings, members: list[Member], on_step: Any = None
                       ) -> list[tuple[int, dict[str, Any]]]:
        """Run a group; on CUDA out-of-memory, halve it and retry down to single rows. Any
        other error of the call fails the group's rows with the reason, not the whole call."""
        import torch

        try:
            return self._run(settings, members, on_step)
        except torch.cuda.OutOfMemoryError as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if self.runtime.batch_size == "auto" and len(members) > 1:
                self._batch_memory.remember(self._batch_key(settings), len(members) // 2)
            if len(members) == 1:
                index, _, row = members[0]
                reason = (
                    f"out of GPU memory even alone at {settings.width}x{settings.height}: "
                    f"use a smaller size or enable vae_tiling / cpu_offload ({err})"
                )
                return [(index, error_row(row, self.provenance, settings.sampler, reason))]
            half = len(members) // 2
            return self._run_splitting(settings, members[:half], on_step) + \
                self._run_splitting(settings, members[half:], on_step)
        except (RowError, UserError) as err:  # what the pipeline refuses about these rows
            return [(index, error_row(row, self.provenance, settings.sampler, str(err)))
                    for index, _, row in members]

    def _run(self, settings: Settings, members: list[Member], on_step: Any = None
             ) -> list[tuple[int, dict]]:
        import torch

        scheduler, scheduler_json = self._scheduler(settings)
        self.pipe.scheduler = scheduler
        if self.adapters is not None:
            self.adapters.activate(settings.adapters)
        requests = [request for _, request, _ in members]
        if self.runtime.torch_compile or self.runtime.compile_regions:
            # pad to a power of two so a compiled denoiser sees a few fixed shapes, not one per
            # batch size; padding rows have their own generators and are dropped afterwards
            requests += [requests[-1]] * (_bucket(len(requests)) - len(requests))
        # CPU generators: the same seed gives the same noise on any device
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        hooks = step_hooks(type(self.pipe), on_step([row for _, _, row in members])
                           if on_step else None)
        batch = Batch(settings, requests, generators, self.spec, self.loaded.refiner, hooks)
        started = time.perf_counter()
        scope = cache_scope(denoiser(self.pipe)) if self.runtime.cache else nullcontext()
        with torch.inference_mode(), scope:
            images = self.family.call(self.pipe, batch)
        images = images[: len(members)]
        seconds = (time.perf_counter() - started) / len(members)
        recorded = self.adapters.recorded(settings.adapters) if self.adapters else "[]"
        return [(index, image_row(row, request, image, settings, scheduler_json, recorded,
                                  self.provenance, len(members), seconds))
                for (index, request, row), image in zip(members, images, strict=True)]


def _bucket(count: int) -> int:
    return 1 << (count - 1).bit_length()
