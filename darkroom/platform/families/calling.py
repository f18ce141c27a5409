"""What a family's pipeline call is given: a `Batch` of rows with equal `Settings`, each row's
own `Request`, and one `torch.Generator` per row.

Every call passes one generator per row, so a row's noise (initial latents and, for stochastic
samplers, every step's noise) comes from its own seed and not from its batch-mates.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Frozen = tuple[tuple[str, Any], ...]  # a mapping as sorted (key, value) pairs: hashable
# called after each denoising step of a pipeline call with (step done, steps, latents); True
# stops the call between steps (diffusers' `callback_on_step_end` and `interrupt`)
StepCallback = Callable[[int, int, Any], bool]


def freeze(mapping: dict[str, Any] | None) -> Frozen:
    """A mapping of plain values (lists become tuples) as sorted pairs, hashable."""
    def frozen(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(frozen(v) for v in value)
        if isinstance(value, dict):
            return freeze(value)
        return value

    return tuple(sorted((k, frozen(v)) for k, v in (mapping or {}).items()))


def thaw(pairs: Frozen) -> dict[str, Any]:
    """`freeze`'s pairs back into a dict (tuples stay tuples, as pipelines take them)."""
    return dict(pairs)


@dataclass(frozen=True)
class Settings:
    """What rows must share to run in one pipeline call."""

    sampler: str
    sampler_overrides: Frozen
    steps: int
    guidance_scale: float
    eta: float
    width: int
    height: int
    call_options: Frozen = ()  # family call options (SDXL micro-conditioning)
    adapters: tuple[tuple[str, float], ...] = ()  # the active LoRA adapters and their scales
    strength: float | None = None  # image editing: how much of the source is noised away
    image_guidance_scale: float | None = None  # instruction editing


@dataclass
class Request:
    """One row's conditioning, already checked against the family."""

    prompt: str
    negative_prompt: str
    seed: int
    class_label: int | None = None
    control_image: Any = None  # a PIL image
    image: Any = None  # the source image (PIL), at the output size
    mask: Any = None  # the mask (PIL, "L"), at the output size: white is repainted
    inputs: list[dict[str, Any]] = field(default_factory=list)  # input images as given


@dataclass
class Batch:
    """One pipeline call: rows of equal settings, each with its request and generator."""

    settings: Settings
    requests: list[Request]
    generators: list[Any]  # torch.Generator, one per request
    spec: Any  # the ModelSpec
    refiner: Any = None  # SDXL's refiner pipeline, when the spec has one
    hooks: dict[str, Any] = field(default_factory=dict)  # step_hooks(...) of this call

    @property
    def prompts(self) -> list[str]:
        """The rows' prompts."""
        return [r.prompt for r in self.requests]

    @property
    def negative_prompts(self) -> list[str]:
        """The rows' negative prompts."""
        return [r.negative_prompt for r in self.requests]

    def common(self) -> dict[str, Any]:
        """The arguments every text-to-image call takes: prompts, steps, guidance, the
        per-row generators, the size, and float images out."""
        s = self.settings
        return {"prompt": self.prompts, "num_inference_steps": s.steps,
                "guidance_scale": s.guidance_scale, "generator": self.generators,
                "width": s.width, "height": s.height, "output_type": "np", **self.hooks}


def step_hooks(pipeline_class: type, callback: StepCallback | None) -> dict[str, Any]:
    """The call arguments that run `callback` after each denoising step (and stop the call
    when it says so), for a pipeline whose `__call__` takes `callback_on_step_end`; none when
    there is no callback or the pipeline takes none (DiT): no work is added to a call."""
    if callback is None or "callback_on_step_end" not in call_parameters(pipeline_class):
        return {}

    def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        steps = getattr(pipe, "_num_timesteps", None) or index + 1
        if callback(index + 1, int(steps), tensors.get("latents")):
            pipe._interrupt = True  # diffusers skips the remaining steps
        return {}

    hooks: dict[str, Any] = {"callback_on_step_end": on_step_end}
    if "latents" in getattr(pipeline_class, "_callback_tensor_inputs", ()):
        hooks["callback_on_step_end_tensor_inputs"] = ["latents"]
    return hooks


def sequence_length(spec: Any) -> dict[str, Any]:
    """`max_sequence_length` when the spec sets it (T5 tokens per prompt)."""
    return {"max_sequence_length": spec.max_sequence_length} if spec.max_sequence_length else {}


@contextmanager
def row_noise(scheduler: Any, generators: list[Any]) -> Iterator[None]:
    """Stochastic samplers draw step noise from the rows' own generators.

    Some pipelines (SD3, Flux, PixArt) do not pass their generator to `scheduler.step`, so a
    stochastic sampler would draw from the global RNG and a row would depend on its
    batch-mates; a pipeline that does pass one keeps it (this only fills in what is missing).
    """
    if "generator" not in step_params(scheduler):
        yield
        return
    step = type(scheduler).step

    def seeded_step(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("generator", generators)
        return step(scheduler, *args, **kwargs)

    scheduler.step = seeded_step
    try:
        yield
    finally:
        del scheduler.step  # back to the class's own method


@functools.lru_cache(maxsize=64)
def call_parameters(pipeline_class: type) -> frozenset[str]:
    """The keyword arguments a pipeline class's `__call__` takes."""
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


@functools.lru_cache(maxsize=64)
def _step_param_names(scheduler_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(scheduler_class.step).parameters)


def step_params(scheduler: Any) -> frozenset[str]:
    """The keyword arguments a scheduler's `step` takes."""
    return _step_param_names(type(scheduler))
