"""The small `AutoencoderKL` both digits pipelines share: 16x16x3 <-> 4x8x8 (LDM: Rombach et al.
2022, who also introduce the KL-regularised autoencoder and the latent `scaling_factor`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from darkroom.platform.zoo.data import IMAGE_SIZE, digits_dataset, to_tensor

LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 2
# 1e-4 collapsed 3 of 4 latent channels in a prototype; 1e-6 keeps all four in use.
KL_WEIGHT = 1e-6


def build_vae() -> AutoencoderKL:
    """Two blocks, so one downsample: a scale factor of 2 (~170k parameters)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def psnr(vae: AutoencoderKL, x: torch.Tensor) -> float:
    """PSNR in dB of posterior-mean reconstructions of images `x` in [0, 1]."""
    with torch.no_grad():
        z = vae.encode(x * 2 - 1).latent_dist.mean
        y = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
    return 10 * math.log10(1.0 / F.mse_loss(y, x).item())


@torch.no_grad()
def normalize_latents(vae: AutoencoderKL, x: torch.Tensor) -> dict[str, Any]:
    """Centre each latent channel and give all four the same spread, inside the VAE's own 1x1
    convs (`quant_conv` / `post_quant_conv`), then set `scaling_factor` to 1/std.

    The reparametrisation is exact (decode(encode(x)) does not change), and it lets the diffusion
    models see zero-mean, unit-variance latents with the standard pipelines, which only know one
    global `scaling_factor` and no shift.
    """
    moments = vae.encode(x * 2 - 1).latent_dist
    mean = moments.mean.mean(dim=(0, 2, 3))
    std = moments.mean.std(dim=(0, 2, 3))
    target = std.pow(2).mean().sqrt()  # the common spread after equalising
    gain = target / std  # z' = (z - mean) * gain
    q, pq = vae.quant_conv, vae.post_quant_conv
    c = LATENT_CHANNELS
    q.weight[:c] *= gain.view(c, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - mean) * gain
    q.bias[c:] += 2 * torch.log(gain)  # log-variance of the posterior follows the scale
    # post_quant_conv(z) = W z + b with z = z' / gain + mean
    pq.bias += (pq.weight[:, :, 0, 0] @ mean)
    pq.weight /= gain.view(1, c, 1, 1)
    vae.register_to_config(scaling_factor=float(1.0 / target))
    return {"latent_channel_mean": mean.tolist(), "latent_channel_std": std.tolist(),
            "latent_std": float(target), "scaling_factor": float(1.0 / target)}


def train_vae(steps: int = 800, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
              log=print, log_every: int = 100) -> tuple[AutoencoderKL, dict[str, Any]]:
    """MSE + KL_WEIGHT * KL on the "train" split; returns the VAE and its stats."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = to_tensor(digits_dataset("train")[0])
    xt = to_tensor(digits_dataset("test")[0])
    vae = build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        batch = x[idx] * 2 - 1
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        rec = F.mse_loss(recon, batch)
        kl = posterior.kl().mean() / batch[0].numel()  # per pixel, like the MSE
        loss = rec + KL_WEIGHT * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            log(f"[vae] step {step}/{steps} mse {rec.item():.5f} kl {kl.item():.1f} "
                f"{time.perf_counter() - start:.0f}s")
    vae.eval()
    stats = {"steps": steps, "test_psnr_db": psnr(vae, xt)}
    stats.update(normalize_latents(vae, x))
    stats["test_psnr_db_after_normalize"] = psnr(vae, xt)
    stats["seconds"] = time.perf_counter() - start
    log(f"[vae] test PSNR {stats['test_psnr_db']:.2f} dB, scaling_factor "
        f"{stats['scaling_factor']:.4f}, {stats['seconds']:.0f}s")
    return vae, stats


@torch.no_grad()
def encode_train_latents(vae: AutoencoderKL) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of the "train" split, already multiplied by `scaling_factor`."""
    dist = vae.encode(to_tensor(digits_dataset("train")[0]) * 2 - 1).latent_dist
    s = vae.config.scaling_factor
    return dist.mean * s, dist.std * s
