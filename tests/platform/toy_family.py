"""A family that lives in this one module: unconditional pixel-space DDPM (Ho et al. 2020),
registered by importing it. Nothing else in the project names it."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families import Family, register
from darkroom.platform.samplers import SAMPLERS


def call(pipe: Any, batch: Any) -> Any:
    """DDPMPipeline draws one image per generator; it takes no prompt and no guidance."""
    import numpy as np

    images = pipe(batch_size=len(batch.generators), generator=batch.generators,
                  num_inference_steps=batch.settings.steps, output_type="np").images
    return np.asarray(images)


def build_tiny() -> Any:
    """A random-init 16 px unconditional UNet with DDPM's linear schedule."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


FAMILY = register(Family(
    name="toy-uncond",
    description="unconditional pixel-space DDPM (Ho et al. 2020), a family from one module",
    pipeline="DDPMPipeline",
    call=call,
    tiny=build_tiny,
    fixed_size=True,
    lora=False,
    # DDPMPipeline hands its generator to every step and never scales the model input
    unfit=tuple(name for name in SAMPLERS if name not in ("ddpm", "ddim")),
))
