"""FLUX.1 dev / schnell (Black Forest Labs 2024): guidance-distilled rectified flow; the
guidance scale is an input of the transformer, negative prompts only through true CFG."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch, row_noise, sequence_length
from darkroom.platform.families.family import Family, FullSize, register


def call(pipe: Any, batch: Batch) -> Any:
    """`guidance_scale` is the distilled guidance; negative prompts with `true_cfg_scale`."""
    extra = sequence_length(batch.spec)
    if batch.spec.true_cfg_scale:
        extra.update(negative_prompt=batch.negative_prompts,
                     true_cfg_scale=batch.spec.true_cfg_scale)
    with row_noise(pipe.scheduler, batch.generators):
        return pipe(**batch.common(), **extra).images


def negative_rule(spec: Any, pipeline_class: type | None) -> str | None:
    """A guidance-distilled model honours a negative prompt only with true CFG."""
    if spec.true_cfg_scale:
        return None
    return ("is guidance-distilled: negative prompts need true CFG; set `true_cfg_scale` "
            "(e.g. 4.0) or drop the negative prompt")


def grid_of(pipe: Any) -> int:
    """Flux packs 2x2 latent patches: sides are multiples of twice the VAE factor."""
    return int(getattr(pipe, "vae_scale_factor", 8)) * 2


def build_tiny(in_channels: int = 64) -> Any:
    """A random-init tiny `FluxPipeline`: guidance-distilled (the guidance is an input of the
    transformer), 2x2-packed latents, Flux.1-dev's dynamic-shift scheduler settings
    (`in_channels`: 384 for FLUX.1 Fill's latents, masked-image latents and mask)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from darkroom.platform.builders.tiny import (
        TEXT_HIDDEN,
        byte_level_clip_tokenizer,
        text_config,
        tiny_flow_vae,
        tiny_t5,
    )

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64, num_layers=1,
        num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, text_encoder=CLIPTextModel(text_config(tokenizer)),
        text_encoder_2=tiny_t5(tokenizer_2), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        transformer=transformer, vae=tiny_flow_vae(),
    )


def build_flux_dev(in_channels: int = 64) -> Any:
    """FLUX.1-dev: 19 double- and 38 single-stream blocks, guidance embedding (11.9B
    parameters); CLIP-L and T5-XXL; dynamic-shift rectified flow (`in_channels`: 384 for
    FLUX.1 Fill)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from darkroom.platform.builders.fullsize import clip_l, flow_vae, make, t5_xxl
    from darkroom.platform.builders.tiny import byte_level_clip_tokenizer

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    transformer = make(
        FluxTransformer2DModel, patch_size=1, in_channels=in_channels, out_channels=64,
        num_layers=19,
        num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, transformer=transformer,
        vae=flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=make(CLIPTextModel, clip_l(tokenizer)), text_encoder_2=t5_xxl(tokenizer_2),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2,
    )


# what every Flux-based family (img2img, Fill, Kontext) shares with FLUX.1 itself
TRAITS: dict[str, Any] = dict(
    samplers="flow", unfit=("flow_heun",),  # Flux's schedule takes no custom sigmas (Heun)
    size_multiple=16, denoiser="transformer", grid_of=grid_of,
)

FAMILY = register(Family(
    name="flux",
    description="FLUX.1 dev / schnell: guidance-distilled rectified flow (Black Forest Labs "
                "2024); guidance_scale is the embedded guidance, true CFG via true_cfg_scale",
    pipeline="FluxPipeline",
    call=call,
    tiny=build_tiny,
    **TRAITS,
    options=("max_sequence_length", "true_cfg_scale"),
    caches=("first_block", "taylorseer", "magcache", "faster", "pab"),
    negative_rule=negative_rule,
    negative_field="true_cfg_scale",
    fullsize=(FullSize("flux-dev", build_flux_dev),),
))
