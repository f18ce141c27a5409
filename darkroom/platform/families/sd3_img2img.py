"""Stable Diffusion 3 / 3.5 image-to-image: the source image's latents noised to `strength`
along the rectified-flow path (Esser et al. 2024) and denoised towards the prompt."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, register


def build_tiny() -> Any:
    """A tiny `StableDiffusion3Img2ImgPipeline` with tiny:sd3's weights."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    from darkroom.platform.families.sd3 import build_tiny as build_sd3

    return editing.from_base(StableDiffusion3Img2ImgPipeline, build_sd3())


FAMILY = register(Family(
    name="sd3-img2img",
    description="Stable Diffusion 3 / 3.5 image-to-image at `strength`",
    pipeline="StableDiffusion3Img2ImgPipeline",
    call=editing.call,
    tiny=build_tiny,
    conditioning=IMAGE,
    samplers="flow",
    options=("max_sequence_length",),
    size_multiple=16,
    denoiser="transformer",
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
