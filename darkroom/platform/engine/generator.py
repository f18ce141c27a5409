"""The Generator: the one actor class of the platform, used by batch jobs and by Ray Serve.

A batch of request rows in, one image row per request out (the Parquet columns of
`records.IMAGE_SCHEMA`, plus `error`, which is null unless that row could not be generated).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from PIL import Image

import darkroom
from darkroom.platform.data.records import IMAGE_COLUMNS, encode_png, sha256, to_uint8
from darkroom.platform.engine.autobatch import BatchSizeMemory, chunks
from darkroom.platform.errors import UserError
from darkroom.platform.families.calls import CALLS, Request, Settings
from darkroom.platform.models.adapters import Adapters
from darkroom.platform.models.caching import cache_scope
from darkroom.platform.models.loading import LoadedModel, load_model, resolve_device
from darkroom.platform.models.runtime import RuntimeSpec, apply_options, configure_threads, denoiser
from darkroom.platform.models.samplers import (
    SAMPLERS,
    SamplerSpec,
    build_scheduler,
    fitting,
    scheduler_config_json,
    scheduler_kind,
)
from darkroom.platform.models.spec import ModelSpec

OUTPUT_COLUMNS = [*IMAGE_COLUMNS, "error"]
IDENTITY_DEFAULTS = {"job_id": "", "run_id": "", "row_id": "", "prompt_id": "", "sample_idx": 0}


NON_FINITE = ("the image came out non-finite (NaN or inf pixels), usually an overflow: use fp32 or "
              "bf16 instead of fp16, or a lower guidance_scale")


class RowError(Exception):
    """This row cannot be generated; the reason goes into its `error` column."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class Generator:
    """Loads a pipeline once; each call turns request rows into image rows.

    Request columns: `seed` (required), `prompt`, `negative_prompt`, `class_label` (id or name),
    `control_image` (encoded image bytes), `width`, `height`, `steps`, `guidance_scale`, `eta`,
    `sampler`, `sampler_overrides` (JSON), and identity columns passed through (`job_id`,
    `run_id`, `row_id`, `prompt_id`, `sample_idx`). Missing settings take the defaults given here.
    """

    def __init__(
        self,
        model: ModelSpec | Mapping[str, Any],
        sampler: SamplerSpec | Mapping[str, Any] | None = None,
        runtime: RuntimeSpec | Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        preload_adapters: bool = True,
    ) -> None:
        self.spec = ModelSpec.model_validate(model)
        self.sampler = SamplerSpec.model_validate(sampler or {})
        self.runtime = RuntimeSpec.model_validate(runtime or {})
        self.device = resolve_device(self.runtime.device)
        configure_threads(self.runtime, self.device)
        self.loaded: LoadedModel = load_model(self.spec, self.device)
        self.pipe = self.loaded.pipe
        self.family = self.loaded.family
        self.adapters = self._load_adapters(preload_adapters)
        apply_options(self.pipe, self.runtime)
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.vae_factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        self.native_size = self._native_size()
        self.size_multiple = self._size_multiple()
        kind = self.family.samplers
        if kind == "any":  # t2i: what its own scheduler says
            kind = scheduler_kind(self.base_scheduler_config)
        self.fitting_samplers = fitting(kind, self.family.unfit)
        if sampler is None and self.sampler.name not in self.fitting_samplers:
            # no sampler asked for: the first that fits (flow_euler for flow models)
            self.sampler = SamplerSpec(name=self.fitting_samplers[0])
        self.defaults = {"steps": 25, "guidance_scale": 5.0, "eta": 0.0, **(defaults or {})}
        self._schedulers: dict[str, tuple[Any, str]] = {}
        self._batch_memory = BatchSizeMemory()
        self._provenance = {
            "model": self.spec.label,
            "model_family": self.family.name,
            "model_revision": self.loaded.revision,
            "model_spec": json.dumps(self.spec.model_dump(mode="json"), sort_keys=True),
            "runtime_options": self.runtime.recorded(),
            "device": torch.cuda.get_device_name() if self.device.startswith("cuda") else "cpu",
            "darkroom_version": darkroom.__version__,
            "diffusers_version": _version("diffusers"),
            "torch_version": torch.__version__,
        }
        self.warm_up_seconds = 0.0  # the compile's cold start, for benchmarks and logs
        if self.runtime.torch_compile or self.runtime.compile_regions:
            started = time.perf_counter()
            self.warm_up()
            self.warm_up_seconds = time.perf_counter() - started

    def warm_up(self) -> None:
        """One small call so compilation (or lazy init) happens now, not on the first request."""
        row = {"seed": 0, "prompt": "warm-up", "class_label": 0, "steps": 2}
        if self.family.conditioning == "text+control":
            row["control_image"] = encode_png(np.zeros((8, 8, 3), np.uint8))
        self.generate([row])

    # -- public entry points -------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data entry point: a batch of columns in, a batch of columns out."""
        names = list(batch)
        count = len(batch[names[0]]) if names else 0
        rows = [{name: _plain(batch[name][i]) for name in names} for i in range(count)]
        out = self.generate(rows)
        return {col: _column([row[col] for row in out], col) for col in OUTPUT_COLUMNS}

    def generate(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Image rows for request rows, in the same order; failed rows carry `error`."""
        results: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[Settings, list[tuple[int, Request, dict]]] = {}
        for index, row in enumerate(rows):
            try:
                settings, request = self._prepare(row)
            except (RowError, UserError) as err:
                results[index] = self._error_row(row, str(err))
                continue
            groups.setdefault(settings, []).append((index, request, dict(row)))
        for settings, members in groups.items():
            for chunk in chunks(members, self._batch_limit(settings)):
                for index, out in self._run_splitting(settings, chunk):
                    results[index] = out
        return results  # type: ignore[return-value]

    # -- one row -> settings + request ---------------------------------------------------------

    def _prepare(self, row: Mapping[str, Any]) -> tuple[Settings, Request]:
        """One request row -> the settings it shares with others (rows with equal settings are
        one pipeline call) and its own request (prompt, class, control image, seed).

        Missing settings take the Generator's defaults; a row that cannot be generated (no seed,
        a class name the model lacks, a size off the VAE's grid) raises RowError, which fails
        that row only.
        """
        value = lambda key: None if _missing(row.get(key)) else row.get(key)  # noqa: E731
        if value("seed") is None:
            raise RowError("`seed` is missing")
        sampler = value("sampler") or self.sampler.name
        overrides = value("sampler_overrides")
        if sampler not in SAMPLERS:
            raise RowError(f"unknown sampler `{sampler}`")
        if sampler not in self.fitting_samplers:
            raise RowError(f"sampler `{sampler}` does not fit {self.family.name} models; "
                           f"fitting: {', '.join(self.fitting_samplers)}")
        if overrides is None:
            overrides = self.sampler.overrides if sampler == self.sampler.name else {}
        elif isinstance(overrides, str):
            overrides = json.loads(overrides or "{}")
        width, height = self._size(value("width"), value("height"))
        steps = int(value("steps") or self.defaults["steps"])
        if steps < 1:
            raise RowError(f"`steps` must be at least 1, got {steps}")
        settings = Settings(
            sampler=sampler,
            sampler_overrides=json.dumps(overrides, sort_keys=True),
            steps=steps,
            guidance_scale=float(_first(value("guidance_scale"), self.defaults["guidance_scale"])),
            eta=float(_first(value("eta"), self.defaults["eta"])),
            width=width,
            height=height,
            options=self._call_options(value("call_options")),
            adapters=self._active_adapters(value("adapters"), value("lora_scale")),
        )
        negative = str(value("negative_prompt") or "")
        if negative and not self._takes_negative_prompt():
            raise RowError(
                f"{self.spec.label} ({self.family.name}) takes no negative prompt"
                + (": set `true_cfg_scale` for true CFG with one" if self.family.name == "flux"
                   else "")
            )
        request = Request(
            prompt=str(value("prompt") or ""),
            negative_prompt=negative,
            class_label=self._class_label(value("class_label"), value("prompt")),
            control_image=self._control_image(value("control_image"), width, height),
            seed=int(value("seed")),
        )
        return settings, request

    def _native_size(self) -> int:
        net = getattr(self.pipe, "unet", None) or self.pipe.transformer
        latent = getattr(net.config, "sample_size", None) or getattr(
            self.pipe, "default_sample_size", 64)  # Flux's transformer has no sample size
        return int(latent) * self.vae_factor

    def _size_multiple(self) -> int:
        """Sides are multiples of the VAE factor times the latent patching (Flux packs 2x2)."""
        net = getattr(self.pipe, "unet", None) or self.pipe.transformer
        patch = 2 if self.family.name == "flux" else int(getattr(net.config, "patch_size", 1) or 1)
        return self.vae_factor * patch

    def _call_options(self, options: Any) -> str:
        parsed = json.loads(options) if isinstance(options, str) and options else {}
        if parsed and self.family.name != "sdxl":
            raise RowError(f"micro-conditioning ({', '.join(parsed)}) applies to sdxl models "
                           f"only; {self.spec.label} is {self.family.name}")
        return json.dumps(parsed, sort_keys=True)

    def _load_adapters(self, preload: bool) -> Adapters | None:
        """The model's adapters: all loaded now, or (serve) each when first asked for."""
        if not self.spec.loras:
            return None
        adapters = Adapters(self.pipe, self.spec.allow_pickle, fuse=self.runtime.fuse_lora)
        for lora in self.spec.loras if preload else ():
            adapters.load(lora)
        return adapters

    def _active_adapters(self, names: Any, lora_scale: Any) -> str:
        """The row's adapters: `adapters` (JSON list of names; missing: all of the model's) at
        their scales times `lora_scale`, as JSON [[name, scale], ...] in the spec's order."""
        wanted = json.loads(names) if isinstance(names, str) else names
        scale = 1.0 if lora_scale is None else float(lora_scale)
        known = {lora.name: lora.scale for lora in self.spec.loras}
        if wanted is None:
            wanted = list(known)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise RowError(f"unknown adapter(s) {', '.join(unknown)} for {self.spec.label}; "
                           f"it has: {', '.join(known) or 'none'}")
        return json.dumps([[n, known[n] * scale] for n in known if n in wanted])

    def _takes_negative_prompt(self) -> bool:
        """Whether a row's negative prompt can be honoured (a class-conditional DiT has no text
        at all and ignores it, as it ignores the prompt)."""
        if self.family.name == "flux":
            return bool(self.spec.true_cfg_scale)
        if self.family.name == "t2i":
            from darkroom.platform.families.calls import call_parameters

            return "negative_prompt" in call_parameters(type(self.pipe))
        return True

    def _size(self, width: Any, height: Any) -> tuple[int, int]:
        width = int(width or self.defaults.get("width") or self.native_size)
        height = int(height or self.defaults.get("height") or self.native_size)
        if self.family.name == "dit":
            if (width, height) != (self.native_size, self.native_size):
                raise RowError(
                    f"DiT makes {self.native_size}x{self.native_size} images only; "
                    f"got width {width}, height {height}: leave them unset or use that size"
                )
            return width, height
        for name, side in (("width", width), ("height", height)):
            if side <= 0 or side % self.size_multiple:
                raise RowError(
                    f"`{name}` must be a positive multiple of {self.size_multiple} (the latent "
                    f"grid of {self.spec.label}), got {side}"
                )
        return width, height

    def _class_label(self, label: Any, prompt: Any) -> int | None:
        if self.family.conditioning != "class":
            # not conditioning, but recorded: the class a prompt asks for, to judge accuracy by
            return int(label) if str(label).strip().lstrip("-").isdigit() else None
        if label is None:
            hint = f" (got prompt {str(prompt)[:40]!r})" if prompt else ""
            raise RowError(
                f"{self.spec.label} is class-conditional: give `class_label` as an id or a "
                f"name{hint}"
            )
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            names = self.pipe.labels  # DiTPipeline: name -> id
            if label not in names:
                from darkroom.platform.errors import did_you_mean

                raise RowError(f"unknown class name {label!r};{did_you_mean(label, names)}")
            return int(names[label])
        label = int(label)
        classes = int(self.pipe.transformer.config.num_embeds_ada_norm)
        if not 0 <= label < classes:
            raise RowError(f"`class_label` must be in 0..{classes - 1}, got {label}")
        return label

    def _control_image(self, data: Any, width: int, height: int) -> Image.Image | None:
        if self.family.conditioning != "text+control":
            return None
        if data is None:
            raise RowError(
                f"{self.spec.label} is a ControlNet model: the row needs `control_image`"
            )
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as err:
            raise RowError(f"`control_image` is not a readable image: {err}") from err
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        control = self.spec.control
        if control.preprocessor == "canny":
            import cv2

            edges = cv2.Canny(np.asarray(image), control.low_threshold, control.high_threshold)
            image = Image.fromarray(np.stack([edges] * 3, axis=-1))
        return image

    # -- groups -> images ----------------------------------------------------------------------

    def _scheduler(self, settings: Settings) -> tuple[Any, str]:
        key = f"{settings.sampler}|{settings.sampler_overrides}"
        if key not in self._schedulers:
            overrides = json.loads(settings.sampler_overrides)
            spec = SamplerSpec(name=settings.sampler, overrides=overrides)
            scheduler = build_scheduler(spec, self.base_scheduler_config)
            self._schedulers[key] = (scheduler, scheduler_config_json(scheduler))
        return self._schedulers[key]

    def _batch_key(self, settings: Settings) -> str:
        return "|".join([self._provenance["device"], self.spec.label, self.loaded.revision,
                         self.runtime.recorded(), f"{settings.width}x{settings.height}"])

    def _batch_limit(self, settings: Settings) -> int | None:
        if self.runtime.batch_size == "auto":
            return self._batch_memory.get(self._batch_key(settings))
        return self.runtime.batch_size

    def _run_splitting(self, settings: Settings, members: list) -> list[tuple[int, dict]]:
        """Run a group; on CUDA out-of-memory, halve it and retry down to single rows."""
        try:
            return self._run(settings, members)
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
                return [(index, self._error_row(row, reason))]
            half = len(members) // 2
            return self._run_splitting(settings, members[:half]) + self._run_splitting(
                settings, members[half:]
            )

    def _run(self, settings: Settings, members: list) -> list[tuple[int, dict]]:
        scheduler, scheduler_json = self._scheduler(settings)
        self.pipe.scheduler = scheduler
        active = tuple((name, scale) for name, scale in json.loads(settings.adapters))
        if self.adapters is not None:
            self.adapters.activate(active)
        requests = [request for _, request, _ in members]
        if self.runtime.torch_compile or self.runtime.compile_regions:
            # pad to a power of two so a compiled denoiser sees a few fixed shapes, not one per
            # batch size; padding rows have their own generators and are dropped afterwards
            requests += [requests[-1]] * (_bucket(len(requests)) - len(requests))
        # CPU generators: the same seed gives the same noise on any device
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        started = time.perf_counter()
        scope = cache_scope(denoiser(self.pipe)) if self.runtime.cache else nullcontext()
        with torch.inference_mode(), scope:
            images = CALLS[self.family.name](
                self.pipe, self.loaded.refiner, settings, requests, generators, self.spec
            )
        images = images[: len(members)]
        seconds = (time.perf_counter() - started) / len(members)
        created = dt.datetime.now(dt.UTC)
        out = []
        for (index, request, row), image in zip(members, images, strict=True):
            pixels = np.asarray(image)
            if not np.isfinite(pixels).all():  # would be saved as a black image, silently
                out.append((index, self._error_row(row, NON_FINITE)))
                continue
            png = encode_png(to_uint8(pixels))
            out.append((index, {
                **{k: row.get(k, default) for k, default in IDENTITY_DEFAULTS.items()},
                **self._provenance,
                "seed": request.seed,
                "prompt": request.prompt,
                "negative_prompt": request.negative_prompt,
                "class_label": request.class_label,
                "control_image_sha256": sha256(row["control_image"])
                if request.control_image is not None else None,
                "width": settings.width,
                "height": settings.height,
                "sampler": settings.sampler,
                "sampler_config": scheduler_json,
                "steps": settings.steps,
                "guidance_scale": settings.guidance_scale,
                "eta": settings.eta,
                "call_options": settings.options,
                "adapters": self.adapters.recorded(active) if self.adapters else "[]",
                "image": png,
                "image_sha256": sha256(png),
                "batch_size": len(members),
                "gen_seconds": seconds,
                "created_at": created,
                "error": None,
            }))
        return out

    def _error_row(self, row: Mapping[str, Any], reason: str) -> dict[str, Any]:
        out = {col: None for col in OUTPUT_COLUMNS}
        out.update({k: row.get(k, default) for k, default in IDENTITY_DEFAULTS.items()})
        out.update(self._provenance)
        seed = row.get("seed")
        out.update({
            "seed": None if _missing(seed) else int(seed),
            "prompt": row.get("prompt"),
            "sampler": row.get("sampler") or self.sampler.name,
            "created_at": dt.datetime.now(dt.UTC),
            "error": reason,
        })
        return out


def _bucket(count: int) -> int:
    return 1 << (count - 1).bit_length()


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values."""
    return value.item() if isinstance(value, np.generic) else value


def _column(values: list[Any], name: str) -> np.ndarray:
    if name == "created_at":
        return np.array([np.datetime64(v.replace(tzinfo=None), "us") for v in values])
    return np.array(values, dtype=object)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
