"""Stable Diffusion image-to-image (SDEdit, Meng et al. 2022): the source image noised to
`strength` and denoised towards the prompt."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, FullSize, register


def build_tiny() -> Any:
    """A tiny `StableDiffusionImg2ImgPipeline` with tiny:sd's weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from darkroom.platform.families.sd import build_tiny as build_sd

    return editing.from_base(StableDiffusionImg2ImgPipeline, build_sd())


def build_sd15_img2img() -> Any:
    """SD 1.5 image-to-image with random weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from darkroom.platform.families.sd import build_sd15

    return editing.from_base(StableDiffusionImg2ImgPipeline, build_sd15())


FAMILY = register(Family(
    name="sd-img2img",
    description="Stable Diffusion image-to-image: SDEdit (Meng et al. 2022) at `strength`",
    pipeline="StableDiffusionImg2ImgPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("sd15-img2img", build_sd15_img2img),),
    conditioning=IMAGE,
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
