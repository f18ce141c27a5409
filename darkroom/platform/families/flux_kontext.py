"""FLUX.1 Kontext (Black Forest Labs 2025): instruction editing in context, the source image's
latent tokens placed beside the ones being denoised."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing, flux
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, FullSize, register


def build_tiny() -> Any:
    """A tiny `FluxKontextPipeline` with tiny:flux's weights (Kontext is Flux's architecture)."""
    from diffusers import FluxKontextPipeline

    return editing.from_base(FluxKontextPipeline, flux.build_tiny())


def build_flux_dev_kontext() -> Any:
    """FLUX.1 Kontext [dev] with random weights (FLUX.1-dev's architecture)."""
    from diffusers import FluxKontextPipeline

    return editing.from_base(FluxKontextPipeline, flux.build_flux_dev())


FAMILY = register(Family(
    name="flux-kontext",
    description="FLUX.1 Kontext: instruction editing (the prompt says what to change)",
    pipeline="FluxKontextPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("flux-dev-kontext", build_flux_dev_kontext),),
    conditioning=IMAGE,
    **flux.TRAITS,
    options=("max_sequence_length", "true_cfg_scale"),
    negative_rule=editing.negative_rule,
    negative_field="true_cfg_scale",
))
