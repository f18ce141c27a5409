"""Parts of the full-size architectures with random weights (`random:NAME`) that the family
modules build from their published configs, and the builder that places them on a device.

The compute of a random-weight network is the same as with trained weights, so these measure
throughput and memory on a GPU with nothing to download. Their images are noise. Weights are
created directly on the target device (no multi-GB host copy). Configs: SD 1.5 (Rombach et al.
2022), SDXL base (Podell et al. 2023), DiT-XL/2 256 (Peebles & Xie 2023), ControlNet for SD 1.5
(Zhang et al. 2023), CLIP text towers (Radford et al. 2021; OpenCLIP bigG).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import CLIPTextConfig


class _Placement:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@contextmanager
def placement(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Networks built with `make` inside get their weights on `device` in `dtype`."""
    _Placement.device, _Placement.dtype = device, dtype
    try:
        yield
    finally:
        _Placement.device, _Placement.dtype = "cpu", torch.float32


def make(cls: type, *args: Any, **config: Any) -> Any:
    """Build a network with its weights created on the target device and dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(_Placement.dtype)
    try:
        with torch.device(_Placement.device):
            return cls(*args, **config)
    finally:
        torch.set_default_dtype(previous)


def clip_text(tokenizer, **config: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config,
    )


def clip_l(tokenizer) -> CLIPTextConfig:
    """CLIP ViT-L/14's text tower: SD 1.5's encoder and SDXL's first."""
    return clip_text(tokenizer, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768)


def clip_bigg(tokenizer) -> CLIPTextConfig:
    """OpenCLIP ViT-bigG/14's text tower: SDXL's second encoder."""
    return clip_text(tokenizer, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                      num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)


def sd_vae(scaling_factor: float = 0.18215, force_upcast: bool = False):
    from diffusers import AutoencoderKL

    return make(
        AutoencoderKL, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=512, norm_num_groups=32,
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


def pndm_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         skip_prk_steps=True, steps_offset=1)


def t5_xxl(tokenizer):
    """T5 v1.1 XXL's encoder (Raffel et al. 2020): SD3's third and Flux's second text encoder."""
    from transformers import T5Config, T5EncoderModel

    return make(T5EncoderModel, T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, decoder_start_token_id=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))


def flow_vae(scaling_factor: float, shift_factor: float):
    """The 16-channel VAE of SD3 and Flux (no quant convs, a shift and a scale)."""
    from diffusers import AutoencoderKL

    return make(
        AutoencoderKL, in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
