"""SDXL inpainting (Podell et al. 2023): SDXL's UNet with the mask and masked source's latents
as extra input channels, repainting where the mask is white."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import MASKED
from darkroom.platform.families.family import Family, FullSize, register


def build_tiny() -> Any:
    """A tiny `StableDiffusionXLInpaintPipeline`: tiny:sdxl's parts, its UNet with 9 channels."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from darkroom.platform.families.sdxl import build_tiny as build_sdxl

    return editing.from_base(StableDiffusionXLInpaintPipeline, build_sdxl(in_channels=9))


def build_sdxl_inpaint() -> Any:
    """SDXL inpainting 0.1 with random weights (a 9-channel UNet)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from darkroom.platform.families.sdxl import build_sdxl

    return editing.from_base(StableDiffusionXLInpaintPipeline, build_sdxl(in_channels=9))


FAMILY = register(Family(
    name="sdxl-inpaint",
    description="SDXL inpainting: repaints where the mask is white",
    pipeline="StableDiffusionXLInpaintPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("sdxl-inpaint", build_sdxl_inpaint),),
    conditioning=MASKED,
    options=("keep_unmasked",),
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
