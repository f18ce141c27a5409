"""Random-init tiny pipelines of every family, built fully offline.

They are what tests and smoke runs use: real diffusers pipelines with real components, small enough
to run a 4-step call in well under a second on one CPU core. Their images are noise; their code path
is the real one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from darkroom.platform.models.names import TINY_DIT_LABELS, tiny_path
from darkroom.platform.quiet import quiet_libraries

TEXT_HIDDEN = 32


def byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: one printable unicode symbol for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return list(symbols.values())


def byte_level_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte-level symbols, built with no files.

    Each symbol appears twice (alone and with the end-of-word marker `</w>`), there are no merges,
    and `model_max_length` is 77 as in CLIP (the default is ~1e30 and pipelines pad to it).
    """
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_vae():
    """Four blocks, so the scale factor is 8 as in SD (64 px image <-> 4x8x8 latent)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_unet(**extra):
    """A random-init UNet on the 8x8x4 latent, 32/64 channels; `extra` overrides settings."""
    from diffusers import UNet2DConditionModel

    settings = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return UNet2DConditionModel(**{**settings, **extra})


def sd_scheduler():
    """Stable Diffusion's scaled-linear schedule as a DDIM scheduler (Song et al. 2021)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_sd():
    """A random-init tiny `StableDiffusionPipeline`, without safety checker."""
    from diffusers import StableDiffusionPipeline

    tokenizer = byte_level_clip_tokenizer()
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl():
    """A random-init tiny `StableDiffusionXLPipeline` (SDXL: Podell et al. 2023): two text
    encoders and the size/crop micro-conditioning in the UNet."""
    from diffusers import StableDiffusionXLPipeline

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
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(
            _text_config(tokenizer_2, projection_dim=TEXT_HIDDEN)
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=sd_scheduler(),
    )


def build_dit():
    """A random-init tiny `DiTPipeline` (Peebles & Xie 2023) that learns variance, as DiT-XL/2."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,  # learned variance, as in DiT-XL/2
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline uses class 1000 as the null class
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=scheduler,
                       id2label=TINY_DIT_LABELS)
    pipe.register_to_config(id2label=TINY_DIT_LABELS)  # otherwise it is not saved
    return pipe


def build_controlnet():
    """A tiny SD pipeline with a ControlNet (Zhang et al. 2023) made from its UNet, the zero
    convolutions randomised so that the control image changes the output."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = build_sd()
    controlnet = ControlNetModel.from_unet(
        sd.unet, conditioning_embedding_out_channels=(8, 8, 8, 8)
    )
    # ControlNet starts from zero convolutions (Zhang et al. 2023), under which the control image
    # has no effect at all; random ones let tests see the control image change the output.
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    for zero_conv in zero_convs:
        torch.nn.init.normal_(zero_conv.weight, std=0.05)
    return StableDiffusionControlNetPipeline(
        **{k: v for k, v in sd.components.items() if k != "image_encoder"},
        controlnet=controlnet,
    )


def _t5(tokenizer: CLIPTokenizer):
    """A two-layer T5 encoder over the byte-level vocabulary (the T5 of SD3, Flux, PixArt)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_HIDDEN, d_kv=8, d_ff=64, num_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))


def _flow_vae():
    """SD3/Flux-style VAE: 16 latent channels, no quant convs, shift and scale factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 16, 16),
        layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def build_sd3():
    """A random-init tiny `StableDiffusion3Pipeline` (MMDiT, Esser et al. 2024): two CLIP
    encoders and a T5, rectified-flow scheduler with SD3's shift of 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
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
        vae=_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(
            _text_config(tokenizers[0], projection_dim=TEXT_HIDDEN)),
        text_encoder_2=CLIPTextModelWithProjection(
            _text_config(tokenizers[1], projection_dim=TEXT_HIDDEN)),
        text_encoder_3=_t5(tokenizers[2]),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2],
    )


def build_flux():
    """A random-init tiny `FluxPipeline`: guidance-distilled (the guidance is an input of the
    transformer), 2x2-packed latents, Flux.1-dev's dynamic-shift scheduler settings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=_t5(tokenizer_2), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        transformer=transformer, vae=_flow_vae(),
    )


def build_t2i():
    """A random-init tiny `PixArtSigmaPipeline` (Chen et al. 2024): what `tiny:t2i` stands for,
    a pipeline outside the family table, run by the generic text-to-image family."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = byte_level_clip_tokenizer()
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=TEXT_HIDDEN,
        norm_num_groups=8,
    )
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=_t5(tokenizer), vae=tiny_vae(),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())


TINY_BUILDERS: dict[str, Callable] = {
    "sd": build_sd,
    "sdxl": build_sdxl,
    "dit": build_dit,
    "controlnet": build_controlnet,
    "sd3": build_sd3,
    "flux": build_flux,
    "t2i": build_t2i,
}


def build_tiny(family: str, seed: int = 0):
    """A random-init tiny pipeline of `family`; the same seed gives the same weights."""
    from darkroom.platform.errors import UserError, did_you_mean

    if family not in TINY_BUILDERS:
        raise UserError(f"unknown tiny family `{family}`;{did_you_mean(family, TINY_BUILDERS)}")
    torch.manual_seed(seed)
    return TINY_BUILDERS[family]()


def save_tiny(family: str, out: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a standard diffusers folder (safetensors)."""
    quiet_libraries()
    out = Path(out)
    build_tiny(family, seed).save_pretrained(out, safe_serialization=True)
    return out


def tiny_folder(family: str) -> Path:
    """The cached folder of `tiny:<family>`, built on first use.

    Built in a temporary folder and renamed into place, so concurrent actors never read half a
    pipeline; whoever renames second finds the folder there and throws its copy away.
    """
    folder = tiny_path(family)
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=folder.parent))
    try:
        save_tiny(family, staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
