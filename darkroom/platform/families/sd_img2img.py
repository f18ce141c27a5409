"""Stable Diffusion image-to-image (SDEdit, Meng et al. 2022): the source image noised to
`strength` and denoised towards the prompt."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, register


def build_tiny() -> Any:
    """A tiny `StableDiffusionImg2ImgPipeline` with tiny:sd's weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from darkroom.platform.families.sd import build_tiny as build_sd

    return editing.from_base(StableDiffusionImg2ImgPipeline, build_sd())


FAMILY = register(Family(
    name="sd-img2img",
    description="Stable Diffusion image-to-image: SDEdit (Meng et al. 2022) at `strength`",
    pipeline="StableDiffusionImg2ImgPipeline",
    call=editing.call,
    tiny=build_tiny,
    conditioning=IMAGE,
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
