"""FLUX.1 image-to-image: the source image's packed latents noised to `strength` and denoised
towards the prompt (Black Forest Labs 2024)."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing, flux
from darkroom.platform.families.conditioning import IMAGE
from darkroom.platform.families.family import Family, register


def build_tiny() -> Any:
    """A tiny `FluxImg2ImgPipeline` with tiny:flux's weights."""
    from diffusers import FluxImg2ImgPipeline

    return editing.from_base(FluxImg2ImgPipeline, flux.build_tiny())


FAMILY = register(Family(
    name="flux-img2img",
    description="FLUX.1 image-to-image at `strength`; negative prompts with `true_cfg_scale`",
    pipeline="FluxImg2ImgPipeline",
    call=editing.call,
    tiny=build_tiny,
    conditioning=IMAGE,
    **flux.TRAITS,
    options=("max_sequence_length", "true_cfg_scale"),
    edits=("strength",),
    negative_rule=editing.negative_rule,
    negative_field="true_cfg_scale",
))
