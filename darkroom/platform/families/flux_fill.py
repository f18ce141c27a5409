"""FLUX.1 Fill (Black Forest Labs 2024): inpainting and outpainting with Flux, the packed mask
and masked-image latents concatenated to the latents (384 input channels)."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing, flux
from darkroom.platform.families.conditioning import MASKED
from darkroom.platform.families.family import Family, FullSize, register


def build_tiny() -> Any:
    """A tiny `FluxFillPipeline`: tiny:flux's parts, its transformer taking 384 channels."""
    from diffusers import FluxFillPipeline

    return editing.from_base(FluxFillPipeline, flux.build_tiny(in_channels=384))


def build_flux_dev_fill() -> Any:
    """FLUX.1 Fill [dev] with random weights (384 input channels)."""
    from diffusers import FluxFillPipeline

    return editing.from_base(FluxFillPipeline, flux.build_flux_dev(in_channels=384))


FAMILY = register(Family(
    name="flux-fill",
    description="FLUX.1 Fill: inpainting with Flux, repainting where the mask is white",
    pipeline="FluxFillPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("flux-dev-fill", build_flux_dev_fill),),
    conditioning=MASKED,
    **flux.TRAITS,
    options=("max_sequence_length", "keep_unmasked"),
    edits=("strength",),
    negative_rule=editing.negative_rule,
))
