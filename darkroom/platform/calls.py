"""How each family's diffusers pipeline is called for one group of compatible rows.

Every call passes one `torch.Generator` per row, so a row's noise (initial latents and, for
stochastic samplers, every step's noise) comes from its own seed and not from its batch-mates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
    hand-off of Podell et al. 2023 via `denoising_end` / `denoising_start`."""
    common = dict(
        **_text(requests),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generators,
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


@functools.lru_cache(maxsize=64)
def _step_param_names(scheduler_class: type) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(scheduler_class.step).parameters)


def _step_params(scheduler: Any) -> frozenset[str]:
    return _step_param_names(type(scheduler))


CALLS: dict[str, Call] = {
    "sd": call_sd,
    "sdxl": call_sdxl,
    "dit": call_dit,
    "controlnet": call_controlnet,
}
