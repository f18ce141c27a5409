"""Any other diffusers image-conditioned pipeline (InstructPix2Pix, Qwen-Image-Edit, ...): the
folder's own pipeline class, called with the arguments its `__call__` takes; the source image
always, a mask when the rows have one."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import editing
from darkroom.platform.families.calling import call_parameters
from darkroom.platform.families.conditioning import EDIT
from darkroom.platform.families.family import Family, register


def check_loaded(pipe: Any, spec: Any) -> None:
    """Refuse a pipeline whose call takes no source image."""
    from darkroom.platform.errors import ModelLoadError

    takes = call_parameters(type(pipe))
    missing = [n for n in ("prompt", "image", "num_inference_steps", "generator") if n not in takes]
    if missing:
        raise ModelLoadError(
            f"model `{spec.model}` is a {type(pipe).__name__}, whose call takes no "
            f"{', '.join(missing)}: not an image-editing pipeline the edit family can run")


def build_tiny() -> Any:
    """A tiny `StableDiffusionInstructPix2PixPipeline` (Brooks et al. 2023): what `tiny:edit`
    stands for, tiny:sd's parts with a UNet that also sees the source's latents (8 channels)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from darkroom.platform.families.sd import build_tiny as build_sd

    return editing.from_base(StableDiffusionInstructPix2PixPipeline, build_sd(in_channels=8))


FAMILY = register(Family(
    name="edit",
    description="any other diffusers image-editing pipeline (InstructPix2Pix, Qwen-Image-Edit, "
                "...): the folder's own pipeline class",
    pipeline="",
    call=editing.call,
    tiny=build_tiny,
    tiny_pipeline="StableDiffusionInstructPix2PixPipeline",
    conditioning=EDIT,
    samplers="any",
    options=("max_sequence_length", "true_cfg_scale", "keep_unmasked"),
    size_multiple=16,
    edits=("strength", "image_guidance_scale"),
    negative_rule=editing.negative_rule,
    check_loaded=check_loaded,
    claims=("Img2Img", "Inpaint", "Edit", "Pix2Pix", "Kontext", "Fill"),
))
