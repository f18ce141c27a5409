"""Parts of the random-init tiny pipelines every family builds offline, and their cache.

They are what tests and smoke runs use: real diffusers pipelines with real components, small enough
to run a 4-step call in well under a second on one CPU core. Their images are noise; their code path
is the real one.
"""

from __future__ import annotations

from transformers import (
    CLIPTextConfig,
    CLIPTokenizer,
)

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


def text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
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


def tiny_t5(tokenizer: CLIPTokenizer):
    """A two-layer T5 encoder over the byte-level vocabulary (the T5 of SD3, Flux, PixArt)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_HIDDEN, d_kv=8, d_ff=64, num_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))


def tiny_flow_vae():
    """SD3/Flux-style VAE: 16 latent channels, no quant convs, shift and scale factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 16, 16),
        layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035,
    )
