"""How each family's diffusers pipeline is called for one group of compatible rows.

Every call passes one `torch.Generator` per row, so a row's noise (initial latents and, for
stochastic samplers, every step's noise) comes from its own seed and not from its batch-mates.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Settings:
    """What rows must share to run in one pipeline call."""

    sampler: str
    sampler_overrides: str  # JSON, sorted keys
    steps: int
    guidance_scale: float
    eta: float
    width: int
    height: int
    options: str = "{}"  # JSON: family call options (SDXL micro-conditioning)
    adapters: str = "[]"  # JSON: [[name, scale], ...], the LoRA adapters active for these rows


@dataclass
class Request:
    """One row's conditioning, already checked against the family."""

    prompt: str
    negative_prompt: str
    class_label: int | None
    control_image: Image.Image | None
    seed: int


Call = Callable[[Any, Any, Settings, list[Request], list[torch.Generator], Any], np.ndarray]


def _text(requests: list[Request]) -> dict[str, list[str]]:
    return {
        "prompt": [r.prompt for r in requests],
        "negative_prompt": [r.negative_prompt for r in requests],
    }


def call_sd(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call an SD pipeline on the rows' prompts; float N x H x W x 3 images in [0, 1]."""
    return pipe(
        **_text(requests),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        eta=settings.eta,
        generator=generators,
        width=settings.width,
        height=settings.height,
        output_type="np",
    ).images


def call_sdxl(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """SDXL base, then (if given) the refiner from `refiner_switch` on: the ensemble-of-experts
    hand-off of Podell et al. 2023 via `denoising_end` / `denoising_start`; the size and crop
    micro-conditioning (sec. 2.2) from the settings' options."""
    micro = {k: tuple(v) for k, v in json.loads(settings.options).items()}
    common = dict(
        **_text(requests),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generators,
        **micro,
    )
    if refiner is None:
        return pipe(**common, width=settings.width, height=settings.height, output_type="np").images
    latents = pipe(
        **common, width=settings.width, height=settings.height,
        denoising_end=spec.refiner_switch, output_type="latent",
    ).images
    return refiner(
        **common, image=latents, denoising_start=spec.refiner_switch, output_type="np"
    ).images


def call_dit(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call a DiT pipeline on the rows' class labels, each row's sampler noise from its own
    generator; float N x H x W x 3 images in [0, 1]."""
    # DiTPipeline does not pass its generator to scheduler.step, so stochastic samplers would
    # draw from the global RNG and a row would depend on its batch-mates. Bind the per-row
    # generators to this call's step. With guidance the pipeline steps a doubled batch whose
    # second half it discards, so each row's generator serves both of its halves.
    guided = settings.guidance_scale > 1
    step_generators = generators + generators if guided else generators
    scheduler = pipe.scheduler
    extra = {"eta": settings.eta} if "eta" in _step_params(scheduler) else {}
    if "generator" in _step_params(scheduler):
        extra["generator"] = step_generators
    scheduler.step = functools.partial(type(scheduler).step, scheduler, **extra)
    try:
        return pipe(
            class_labels=[r.class_label for r in requests],
            guidance_scale=settings.guidance_scale,
            generator=generators,
            num_inference_steps=settings.steps,
            output_type="np",
        ).images
    finally:
        del scheduler.step  # back to the class's own method


def call_controlnet(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call a ControlNet pipeline (Zhang et al. 2023) on the rows' prompts and control images
    at the spec's conditioning scale; float N x H x W x 3 images in [0, 1]."""
    return pipe(
        **_text(requests),
        image=[r.control_image for r in requests],
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        eta=settings.eta,
        generator=generators,
        width=settings.width,
        height=settings.height,
        controlnet_conditioning_scale=spec.control.conditioning_scale,
        output_type="np",
    ).images


def call_sd3(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call an SD3 / SD3.5 pipeline (Esser et al. 2024) with classifier-free guidance and the
    rows' negative prompts; float N x H x W x 3 images in [0, 1]."""
    extra = _sequence_length(spec)
    with _row_noise(pipe.scheduler, generators):
        return pipe(**_text(requests), num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, generator=generators,
                    width=settings.width, height=settings.height, output_type="np",
                    **extra).images


def call_flux(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call a Flux pipeline: `guidance_scale` is the distilled guidance the transformer takes as
    an input; negative prompts only through true CFG (`true_cfg_scale`)."""
    extra = _sequence_length(spec)
    if spec.true_cfg_scale:
        extra.update(negative_prompt=[r.negative_prompt for r in requests],
                     true_cfg_scale=spec.true_cfg_scale)
    with _row_noise(pipe.scheduler, generators):
        return pipe(prompt=[r.prompt for r in requests], num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, generator=generators,
                    width=settings.width, height=settings.height, output_type="np",
                    **extra).images


def call_t2i(pipe, refiner, settings: Settings, requests, generators, spec) -> np.ndarray:
    """Call any diffusers text-to-image pipeline with the arguments its `__call__` takes."""
    takes = call_parameters(type(pipe))
    extra: dict[str, Any] = {}
    if "negative_prompt" in takes:
        extra["negative_prompt"] = [r.negative_prompt for r in requests]
    if "eta" in takes:
        extra["eta"] = settings.eta
    if spec.max_sequence_length and "max_sequence_length" in takes:
        extra["max_sequence_length"] = spec.max_sequence_length
    # the asked size, not the nearest of a resolution table; the prompt as given (cleaning
    # captions needs extra packages and changes the text)
    extra.update({k: False for k in ("use_resolution_binning", "clean_caption") if k in takes})
    with _row_noise(pipe.scheduler, generators):
        return pipe(prompt=[r.prompt for r in requests], num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, generator=generators,
                    width=settings.width, height=settings.height, output_type="np",
                    **extra).images


def _sequence_length(spec) -> dict[str, Any]:
    return {"max_sequence_length": spec.max_sequence_length} if spec.max_sequence_length else {}


@contextmanager
def _row_noise(scheduler: Any, generators: list[torch.Generator]) -> Iterator[None]:
    """Stochastic samplers draw step noise from the rows' own generators.

    SD3 and Flux do not pass their generator to `scheduler.step`, so a stochastic sampler would
    draw from the global RNG and a row would depend on its batch-mates; a pipeline that does
    pass one keeps it (the default only fills in what is missing).
    """
    if "generator" not in _step_params(scheduler):
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


def _step_params(scheduler: Any) -> frozenset[str]:
    return _step_param_names(type(scheduler))


CALLS: dict[str, Call] = {
    "sd": call_sd,
    "sdxl": call_sdxl,
    "dit": call_dit,
    "controlnet": call_controlnet,
    "sd3": call_sd3,
    "flux": call_flux,
    "t2i": call_t2i,
}
