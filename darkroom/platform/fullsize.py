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

from darkroom.platform.tiny import byte_level_clip_tokenizer


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


FULLSIZE_BUILDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "sd15": ("sd", build_sd15),
    "sdxl": ("sdxl", build_sdxl),
    "dit-xl-2": ("dit", build_dit_xl_2),
    "sd15-controlnet": ("controlnet", build_sd15_controlnet),
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
