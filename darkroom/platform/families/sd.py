"""Latent Diffusion / Stable Diffusion 1.x-2.x (Rombach et al. 2022): a UNet over a VAE's latents,
conditioned on one CLIP text encoder."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch
from darkroom.platform.families.family import Family, FullSize, register


def call(pipe: Any, batch: Batch) -> Any:
    """The rows' prompts and negative prompts, DDIM's eta; float N x H x W x 3 in [0, 1]."""
    return pipe(**batch.common(), negative_prompt=batch.negative_prompts,
                eta=batch.settings.eta).images


def build_tiny(in_channels: int = 4) -> Any:
    """A random-init tiny `StableDiffusionPipeline`, without safety checker (`in_channels` of
    its UNet: 9 for inpainting, 8 for instruction editing)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from darkroom.platform.builders.tiny import (
        byte_level_clip_tokenizer,
        sd_scheduler,
        text_config,
        tiny_unet,
        tiny_vae,
    )

    tokenizer = byte_level_clip_tokenizer()
    return StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config(tokenizer)), tokenizer=tokenizer,
        unet=tiny_unet(in_channels=in_channels), scheduler=sd_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def build_sd15(in_channels: int = 4) -> Any:
    """SD 1.5 (Rombach et al. 2022) with random weights; PNDM scheduler, no safety checker
    (`in_channels`: 9 for SD 1.5 inpainting)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from darkroom.platform.builders.fullsize import clip_l, make, pndm_scheduler, sd_vae
    from darkroom.platform.builders.tiny import byte_level_clip_tokenizer

    tokenizer = byte_level_clip_tokenizer()
    unet = make(
        UNet2DConditionModel, sample_size=64, in_channels=in_channels, out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=sd_vae(), text_encoder=make(CLIPTextModel, clip_l(tokenizer)), tokenizer=tokenizer,
        unet=unet, scheduler=pndm_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


FAMILY = register(Family(
    name="sd",
    description="Latent Diffusion / Stable Diffusion 1.x-2.x (Rombach et al. 2022)",
    pipeline="StableDiffusionPipeline",
    aliases=("LDMTextToImagePipeline",),
    call=call,
    tiny=build_tiny,
    fullsize=(FullSize("sd15", build_sd15),),
))
