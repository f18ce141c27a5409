"""Stable Diffusion 3 / 3.5 (Esser et al. 2024): an MMDiT over 16-channel latents, three text
encoders (CLIP-L, OpenCLIP bigG, T5-XXL), rectified flow."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch, row_noise, sequence_length
from darkroom.platform.families.family import Family, FullSize, register


def call(pipe: Any, batch: Batch) -> Any:
    """Classifier-free guidance with the rows' negative prompts."""
    with row_noise(pipe.scheduler, batch.generators):
        return pipe(**batch.common(), negative_prompt=batch.negative_prompts,
                    **sequence_length(batch.spec)).images


def load_options(spec: Any, dtype: Any) -> dict[str, Any]:
    """SD3 without its T5 encoder (`text_encoder_3: false`): much less memory."""
    return {} if spec.text_encoder_3 else {"text_encoder_3": None, "tokenizer_3": None}


def build_tiny() -> Any:
    """A random-init tiny `StableDiffusion3Pipeline`: two CLIP encoders and a T5, rectified-flow
    scheduler with SD3's shift of 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from darkroom.platform.builders.tiny import (
        TEXT_HIDDEN,
        byte_level_clip_tokenizer,
        text_config,
        tiny_flow_vae,
        tiny_t5,
    )

    tokenizers = [byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!"),
                  byte_level_clip_tokenizer()]
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=TEXT_HIDDEN, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_HIDDEN, out_channels=16, pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(
            text_config(tokenizers[0], projection_dim=TEXT_HIDDEN)),
        text_encoder_2=CLIPTextModelWithProjection(
            text_config(tokenizers[1], projection_dim=TEXT_HIDDEN)),
        text_encoder_3=tiny_t5(tokenizers[2]),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2],
    )


def _sd35(layers: int, heads: int, caption_dim: int, pos_embed: int, dual: tuple[int, ...]):
    """SD 3.5 (MMDiT, QK-norm, MMDiT-X dual attention for Medium): CLIP-L, OpenCLIP bigG and
    T5-XXL, rectified flow with shift 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from darkroom.platform.builders.fullsize import clip_bigg, clip_l, flow_vae, make, t5_xxl
    from darkroom.platform.builders.tiny import byte_level_clip_tokenizer

    tokenizers = [byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!"),
                  byte_level_clip_tokenizer()]
    transformer = make(
        SD3Transformer2DModel, sample_size=128, patch_size=2, in_channels=16, out_channels=16,
        num_layers=layers, attention_head_dim=64, num_attention_heads=heads,
        joint_attention_dim=4096, caption_projection_dim=caption_dim, pooled_projection_dim=2048,
        pos_embed_max_size=pos_embed, dual_attention_layers=dual, qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=make(CLIPTextModelWithProjection, clip_l(tokenizers[0])),
        text_encoder_2=make(CLIPTextModelWithProjection, clip_bigg(tokenizers[1])),
        text_encoder_3=t5_xxl(tokenizers[2]),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2],
    )


def build_sd35_medium() -> Any:
    """SD 3.5 Medium: 24 MMDiT-X blocks, dual attention in the first 13 (2.24B parameters)."""
    return _sd35(layers=24, heads=24, caption_dim=1536, pos_embed=384, dual=tuple(range(13)))


def build_sd35_large() -> Any:
    """SD 3.5 Large: 38 MMDiT blocks of 38 heads (8.06B parameters)."""
    return _sd35(layers=38, heads=38, caption_dim=2432, pos_embed=192, dual=())


FAMILY = register(Family(
    name="sd3",
    description="Stable Diffusion 3 / 3.5, MMDiT with three text encoders (Esser et al. 2024)",
    pipeline="StableDiffusion3Pipeline",
    call=call,
    tiny=build_tiny,
    samplers="flow",
    options=("max_sequence_length", "text_encoder_3"),
    size_multiple=16,
    denoiser="transformer",
    # First-Block Cache fails inside SD3's joint blocks (diffusers 0.42)
    caches=("taylorseer", "magcache"),
    load_options=load_options,
    fullsize=(FullSize("sd35-medium", build_sd35_medium),
              FullSize("sd35-large", build_sd35_large)),
))
