"""Full-size architectures from their published configs, with random weights: `random:NAME`.

The compute of a random-weight network is the same as with trained weights, so these measure
throughput and memory on a GPU with nothing to download. Their images are noise. Weights are
created directly on the target device (no multi-GB host copy). Configs: SD 1.5 (Rombach et al.
2022), SDXL base (Podell et al. 2023), DiT-XL/2 256 (Peebles & Xie 2023), ControlNet for SD 1.5
(Zhang et al. 2023), CLIP text towers (Radford et al. 2021; OpenCLIP bigG).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from darkroom.platform.builders.tiny import byte_level_clip_tokenizer


class _Placement:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


def _make(cls: type, *args: Any, **config: Any) -> Any:
    """Build a network with its weights created on the target device and dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(_Placement.dtype)
    try:
        with torch.device(_Placement.device):
            return cls(*args, **config)
    finally:
        torch.set_default_dtype(previous)


def _clip_text(tokenizer, **config: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config,
    )


def _clip_l(tokenizer) -> CLIPTextConfig:
    """CLIP ViT-L/14's text tower: SD 1.5's encoder and SDXL's first."""
    return _clip_text(tokenizer, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768)


def _clip_bigg(tokenizer) -> CLIPTextConfig:
    """OpenCLIP ViT-bigG/14's text tower: SDXL's second encoder."""
    return _clip_text(tokenizer, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                      num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)


def _sd_vae(scaling_factor: float = 0.18215, force_upcast: bool = False):
    from diffusers import AutoencoderKL

    return _make(
        AutoencoderKL, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=512, norm_num_groups=32,
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


def _sd_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         skip_prk_steps=True, steps_offset=1)


def build_sd15():
    """SD 1.5 (Rombach et al. 2022) with random weights; PNDM scheduler, no safety checker."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = byte_level_clip_tokenizer()
    unet = _make(
        UNet2DConditionModel, sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_sd_vae(), text_encoder=_make(CLIPTextModel, _clip_l(tokenizer)), tokenizer=tokenizer,
        unet=unet, scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl():
    """SDXL base (Podell et al. 2023) with random weights: CLIP-L and OpenCLIP bigG, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!")
    unet = _make(
        UNet2DConditionModel, sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=_sd_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=_make(CLIPTextModel, _clip_l(tokenizer)),
        text_encoder_2=_make(CLIPTextModelWithProjection, _clip_bigg(tokenizer_2)),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )


def build_dit_xl_2():
    """DiT-XL/2 256 px (Peebles & Xie 2023) with random weights: 1000 classes, DDIM scheduler."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = _make(
        DiTTransformer2DModel, num_attention_heads=16, attention_head_dim=72, in_channels=4,
        out_channels=8, num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
    )
    return DiTPipeline(transformer=transformer, vae=_sd_vae(),
                       scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False),
                       id2label={i: f"class {i}" for i in range(1000)})


def build_sd15_controlnet():
    """SD 1.5 with a ControlNet (Zhang et al. 2023) made from its UNet, random weights."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = build_sd15()
    controlnet = _make(ControlNetModel.from_unet, sd.unet)
    return StableDiffusionControlNetPipeline(
        **{k: v for k, v in sd.components.items() if k != "image_encoder"}, controlnet=controlnet
    )


def _t5_xxl(tokenizer):
    """T5 v1.1 XXL's encoder (Raffel et al. 2020): SD3's third and Flux's second text encoder."""
    from transformers import T5Config, T5EncoderModel

    return _make(T5EncoderModel, T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, decoder_start_token_id=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))


def _flow_vae(scaling_factor: float, shift_factor: float):
    """The 16-channel VAE of SD3 and Flux (no quant convs, a shift and a scale)."""
    from diffusers import AutoencoderKL

    return _make(
        AutoencoderKL, in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _sd35(layers: int, heads: int, caption_dim: int, pos_embed: int, dual: tuple[int, ...]):
    """SD 3.5 (Esser et al. 2024; MMDiT, QK-norm, MMDiT-X dual attention for Medium): CLIP-L,
    OpenCLIP bigG and T5-XXL, rectified flow with shift 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizers = [byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!"),
                  byte_level_clip_tokenizer()]
    transformer = _make(
        SD3Transformer2DModel, sample_size=128, patch_size=2, in_channels=16, out_channels=16,
        num_layers=layers, attention_head_dim=64, num_attention_heads=heads,
        joint_attention_dim=4096, caption_projection_dim=caption_dim, pooled_projection_dim=2048,
        pos_embed_max_size=pos_embed, dual_attention_layers=dual, qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_make(CLIPTextModelWithProjection, _clip_l(tokenizers[0])),
        text_encoder_2=_make(CLIPTextModelWithProjection, _clip_bigg(tokenizers[1])),
        text_encoder_3=_t5_xxl(tokenizers[2]),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2],
    )


def build_sd35_medium():
    """SD 3.5 Medium: 24 MMDiT-X blocks, dual attention in the first 13 (2.24B parameters)."""
    return _sd35(layers=24, heads=24, caption_dim=1536, pos_embed=384, dual=tuple(range(13)))


def build_sd35_large():
    """SD 3.5 Large: 38 MMDiT blocks of 38 heads (8.06B parameters)."""
    return _sd35(layers=38, heads=38, caption_dim=2432, pos_embed=192, dual=())


def build_flux_dev():
    """FLUX.1-dev (Black Forest Labs 2024): 19 double- and 38 single-stream blocks, guidance
    embedding (11.9B parameters); CLIP-L and T5-XXL; dynamic-shift rectified flow."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    transformer = _make(
        FluxTransformer2DModel, patch_size=1, in_channels=64, num_layers=19,
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
        vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_make(CLIPTextModel, _clip_l(tokenizer)), text_encoder_2=_t5_xxl(tokenizer_2),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2,
    )


FULLSIZE_BUILDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "sd15": ("sd", build_sd15),
    "sdxl": ("sdxl", build_sdxl),
    "dit-xl-2": ("dit", build_dit_xl_2),
    "sd15-controlnet": ("controlnet", build_sd15_controlnet),
    "sd35-medium": ("sd3", build_sd35_medium),
    "sd35-large": ("sd3", build_sd35_large),
    "flux-dev": ("flux", build_flux_dev),
}


def build_fullsize(name: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight full-size pipeline, its weights created directly on `device` in `dtype`."""
    torch.manual_seed(seed)
    _Placement.device, _Placement.dtype = device, dtype
    try:
        pipe = FULLSIZE_BUILDERS[name][1]()
    finally:
        _Placement.device, _Placement.dtype = "cpu", torch.float32
    return pipe.to(device)
