"""SDXL image-to-image (SDEdit, Meng et al. 2022, on SDXL: Podell et al. 2023)."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, register


def build_tiny() -> Any:
    """A tiny `StableDiffusionXLImg2ImgPipeline` with tiny:sdxl's weights."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from darkroom.platform.families.sdxl import build_tiny as build_sdxl

    return editing.from_base(StableDiffusionXLImg2ImgPipeline, build_sdxl())


FAMILY = register(Family(
    name="sdxl-img2img",
    description="SDXL image-to-image at `strength` (SDEdit on SDXL)",
    pipeline="StableDiffusionXLImg2ImgPipeline",
    call=editing.call,
    tiny=build_tiny,
    conditioning=IMAGE,
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
