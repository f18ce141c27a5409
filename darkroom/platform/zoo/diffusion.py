"""The training loop both digits diffusion models share: epsilon prediction with uniform
timesteps (DDPM: Ho et al. 2020), warmup + cosine learning rate, and an EMA of the weights, which
is what gets saved (as in DiT and LDM).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch


class EMA:
    """Exponential moving average of parameters, with the usual warmup of the decay."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Move the average toward the current parameters: shadow += (1 - decay)(p - shadow),
        the decay capped at (1 + n)/(10 + n) for the n-th update."""
        self.updates += 1
        # early on the average would be dominated by the random init; (1+n)/(10+n) ramps it in
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the parameters with their moving average, in place."""
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup, then cosine from `lr` down to lr/10 at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_diffusion(
    name: str,
    params: Sequence[torch.nn.Parameter],
    loss_fn: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int = 100,
    ema_decay: float = 0.999,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> dict[str, float]:
    """Run `steps` AdamW steps of `loss_fn(step)`; leave the EMA weights in the parameters."""
    start = time.perf_counter()
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = EMA(params, ema_decay)
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            log(f"[{name}] step {step + 1}/{steps} loss {running:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s")
    ema.copy_to_params()
    return {"steps": steps, "final_loss": running or float("nan"),
            "seconds": time.perf_counter() - start}
