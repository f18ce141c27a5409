"""Any other diffusers text-to-image pipeline (PixArt-Sigma, Sana, Kolors, Lumina, HunyuanDiT,
Qwen-Image, ...): the folder's own pipeline class, called with the arguments its `__call__`
takes."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch, call_parameters, row_noise
from darkroom.platform.families.family import Family, register


def call(pipe: Any, batch: Batch) -> Any:
    """The prompts, and what else the pipeline's call signature takes."""
    takes = call_parameters(type(pipe))
    extra: dict[str, Any] = {}
    if "negative_prompt" in takes:
        extra["negative_prompt"] = batch.negative_prompts
    if "eta" in takes:
        extra["eta"] = batch.settings.eta
    if batch.spec.max_sequence_length and "max_sequence_length" in takes:
        extra["max_sequence_length"] = batch.spec.max_sequence_length
    # the asked size, not the nearest of a resolution table; the prompt as given (cleaning
    # captions needs extra packages and changes the text)
    extra.update({k: False for k in ("use_resolution_binning", "clean_caption") if k in takes})
    with row_noise(pipe.scheduler, batch.generators):
        return pipe(**batch.common(), **extra).images


def negative_rule(spec: Any, pipeline_class: type | None) -> str | None:
    """Only when the pipeline's call takes `negative_prompt` (unknown before loading: allowed)."""
    if pipeline_class is None or "negative_prompt" in call_parameters(pipeline_class):
        return None
    return f"takes no negative prompt ({pipeline_class.__name__}); drop it"


def check_loaded(pipe: Any, spec: Any) -> None:
    """Refuse a pipeline whose call is not text-to-image."""
    from darkroom.platform.errors import ModelLoadError

    takes = call_parameters(type(pipe))
    missing = [name for name in ("prompt", "num_inference_steps", "generator") if name not in takes]
    if missing:
        raise ModelLoadError(
            f"model `{spec.model}` is a {type(pipe).__name__}, whose call takes no "
            f"{', '.join(missing)}: not a text-to-image pipeline the t2i family can run"
        )


def build_tiny() -> Any:
    """A random-init tiny `PixArtSigmaPipeline` (Chen et al. 2024): what `tiny:t2i` stands for,
    a pipeline outside the family table, run by the generic text-to-image family."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    from darkroom.platform.builders.tiny import (
        TEXT_HIDDEN,
        byte_level_clip_tokenizer,
        tiny_t5,
        tiny_vae,
    )

    tokenizer = byte_level_clip_tokenizer()
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=TEXT_HIDDEN,
        norm_num_groups=8,
    )
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(tokenizer),
                               vae=tiny_vae(), transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())


FAMILY = register(Family(
    name="t2i",
    description="any other diffusers text-to-image pipeline (PixArt-Sigma, Sana, Kolors, "
                "Lumina, HunyuanDiT, Qwen-Image, ...): the folder's own pipeline class",
    pipeline="",
    call=call,
    tiny=build_tiny,
    tiny_pipeline="PixArtSigmaPipeline",
    samplers="any",
    options=("max_sequence_length",),
    size_multiple=16,
    denoiser="transformer",
    caches=("first_block", "magcache"),
    negative_rule=negative_rule,
    check_loaded=check_loaded,
))
