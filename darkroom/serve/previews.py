"""Cheap previews of an image being denoised, from its latents: no VAE decode.

Four-channel latents of the SD 1.x/2.x and SDXL families map to RGB by a fixed linear
approximation (the factors ComfyUI's latent formats use for its previews); other latents (SD3's
and Flux's 16 channels, packed for Flux) show their first three channels, each stretched to
[0, 1]. A preview is upscaled to the image's size. Only rows that ask for previews
(`stream: true` with `partial_images`) cost this work.
"""

from __future__ import annotations

import io
from typing import Any

SD15 = ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
         [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0])
SDXL = ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
         [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011])
FACTORS = {"sd": SD15, "sd-img2img": SD15, "sd-inpaint": SD15, "controlnet": SD15,
           "edit": SD15, "sdxl": SDXL, "sdxl-img2img": SDXL, "sdxl-inpaint": SDXL}


def preview_steps(count: int, steps: int) -> set[int]:
    """The steps after which the `count` previews of a `steps`-step call are taken."""
    return {max(1, round(steps * (j + 1) / (count + 1))) for j in range(count)} - {steps}


def preview(latents: Any, family: str, width: int, height: int, output_format: str = "png"
            ) -> bytes:
    """One row's latents (C x h x w, or Flux's packed sequence x C*4) -> an encoded preview."""
    import numpy as np
    import torch
    from PIL import Image

    from darkroom.serve.outputs import PIL_FORMATS

    x = latents.detach().float().cpu()
    if x.ndim == 2:  # Flux packs 2 x 2 patches into its sequence
        rows, cols = height // 16, width // 16
        channels = x.shape[1] // 4
        x = x.view(rows, cols, channels, 2, 2).permute(2, 0, 3, 1, 4).reshape(
            channels, rows * 2, cols * 2)
    factors = FACTORS.get(family)
    if factors and x.shape[0] == 4:
        weights, bias = (torch.tensor(v) for v in factors)
        rgb = ((torch.einsum("chw,cr->rhw", x, weights) + bias[:, None, None]) + 1) / 2
    else:
        rgb = x[:3]
        low = rgb.amin(dim=(1, 2), keepdim=True)
        rgb = (rgb - low) / (rgb.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-6)
    pixels = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=PIL_FORMATS[output_format])
    return buffer.getvalue()
