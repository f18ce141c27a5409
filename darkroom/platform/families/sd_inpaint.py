"""Stable Diffusion inpainting (Rombach et al. 2022, sec. 4.3.2): a UNet that also sees the mask
and the masked source's latents (9 input channels) repaints where the mask is white."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import MASKED
from darkroom.platform.families.family import Family, FullSize, register


def build_tiny() -> Any:
    """A tiny `StableDiffusionInpaintPipeline`: tiny:sd's parts, its UNet with 9 channels."""
    from diffusers import StableDiffusionInpaintPipeline

    from darkroom.platform.families.sd import build_tiny as build_sd

    return editing.from_base(StableDiffusionInpaintPipeline, build_sd(in_channels=9))


def build_sd15_inpaint() -> Any:
    """SD 1.5 inpainting with random weights (a 9-channel UNet)."""
    from diffusers import StableDiffusionInpaintPipeline

    from darkroom.platform.families.sd import build_sd15

    return editing.from_base(StableDiffusionInpaintPipeline, build_sd15(in_channels=9))


FAMILY = register(Family(
    name="sd-inpaint",
    description="Stable Diffusion inpainting: repaints where the mask is white",
    pipeline="StableDiffusionInpaintPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("sd15-inpaint", build_sd15_inpaint),),
    conditioning=MASKED,
    options=("keep_unmasked",),
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
