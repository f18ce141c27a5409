"""SDXL (Podell et al. 2023): two text encoders, size and crop micro-conditioning, and an
optional refiner that takes over for the last steps."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch, thaw
from darkroom.platform.families.family import Family, FullSize, register

# the size and crop micro-conditioning of sec. 2.2, as the pipeline call takes it
MICRO_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size",
                      "negative_original_size", "negative_crops_coords_top_left",
                      "negative_target_size")


def call(pipe: Any, batch: Batch) -> Any:
    """SDXL base, then (if given) the refiner from `refiner_switch` on: the ensemble-of-experts
    hand-off via `denoising_end` / `denoising_start`."""
    common = dict(
        prompt=batch.prompts, negative_prompt=batch.negative_prompts,
        num_inference_steps=batch.settings.steps, guidance_scale=batch.settings.guidance_scale,
        generator=batch.generators, **thaw(batch.settings.call_options),
    )
    if batch.refiner is None:
        common.update(batch.hooks)
    size = {"width": batch.settings.width, "height": batch.settings.height}
    if batch.refiner is None:
        return pipe(**common, **size, output_type="np").images
    switch = batch.spec.refiner_switch
    latents = pipe(**common, **size, denoising_end=switch, output_type="latent").images
    return batch.refiner(**common, image=latents, denoising_start=switch,
                         output_type="np").images


def build_tiny(in_channels: int = 4) -> Any:
    """A random-init tiny `StableDiffusionXLPipeline`: two text encoders and the size/crop
    micro-conditioning in the UNet (`in_channels`: 9 for inpainting)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from darkroom.platform.builders.tiny import (
        TEXT_HIDDEN,
        byte_level_clip_tokenizer,
        sd_scheduler,
        text_config,
        tiny_unet,
        tiny_vae,
    )

    tokenizer = byte_level_clip_tokenizer()
    tokenizer_2 = byte_level_clip_tokenizer(pad_token="!")
    time_embed_dim = 8
    unet = tiny_unet(
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six micro-conditioning numbers (sizes and crop) plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        transformer_layers_per_block=1,
        in_channels=in_channels,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(
            text_config(tokenizer_2, projection_dim=TEXT_HIDDEN)
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=sd_scheduler(),
    )


def build_sdxl(in_channels: int = 4) -> Any:
    """SDXL base with random weights: CLIP-L and OpenCLIP bigG, Euler (`in_channels`: 9 for
    SDXL inpainting)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from darkroom.platform.builders.fullsize import clip_bigg, clip_l, make, sd_vae
    from darkroom.platform.builders.tiny import byte_level_clip_tokenizer

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!")
    unet = make(
        UNet2DConditionModel, sample_size=128, in_channels=in_channels, out_channels=4,
        layers_per_block=2,
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
        vae=sd_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=make(CLIPTextModel, clip_l(tokenizer)),
        text_encoder_2=make(CLIPTextModelWithProjection, clip_bigg(tokenizer_2)),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )


FAMILY = register(Family(
    name="sdxl",
    description="SDXL with optional refiner hand-off and micro-conditioning (Podell et al. 2023)",
    pipeline="StableDiffusionXLPipeline",
    call=call,
    tiny=build_tiny,
    options=("refiner",),
    refiner="StableDiffusionXLImg2ImgPipeline",
    call_options=MICRO_CONDITIONING,
    fullsize=(FullSize("sdxl", build_sdxl),),
))
