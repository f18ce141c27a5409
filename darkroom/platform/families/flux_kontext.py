"""FLUX.1 Kontext (Black Forest Labs 2025): instruction editing in context, the source image's
latent tokens placed beside the ones being denoised."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, FullSize, register
from darkroom.platform.families.flux import grid_of


def build_tiny() -> Any:
    """A tiny `FluxKontextPipeline` with tiny:flux's weights (Kontext is Flux's architecture)."""
    from diffusers import FluxKontextPipeline

    from darkroom.platform.families.flux import build_tiny as build_flux

    return editing.from_base(FluxKontextPipeline, build_flux())


def build_flux_dev_kontext() -> Any:
    """FLUX.1 Kontext [dev] with random weights (FLUX.1-dev's architecture)."""
    from diffusers import FluxKontextPipeline

    from darkroom.platform.families.flux import build_flux_dev

    return editing.from_base(FluxKontextPipeline, build_flux_dev())


FAMILY = register(Family(
    name="flux-kontext",
    description="FLUX.1 Kontext: instruction editing (the prompt says what to change)",
    pipeline="FluxKontextPipeline",
    call=editing.call,
    tiny=build_tiny,
    fullsize=(FullSize("flux-dev-kontext", build_flux_dev_kontext),),
    conditioning=IMAGE,
    samplers="flow",
    unfit=("flow_heun",),
    options=("max_sequence_length", "true_cfg_scale"),
    size_multiple=16,
    denoiser="transformer",
    negative_rule=editing.negative_rule,
    negative_field="true_cfg_scale",
    grid_of=grid_of,
))
