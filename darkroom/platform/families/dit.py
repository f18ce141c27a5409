"""DiT (Peebles & Xie 2023): a class-conditional Diffusion Transformer over VAE latents, at its
native size only."""

from __future__ import annotations

import functools
from typing import Any

from darkroom.platform.families.calling import Batch, step_params
from darkroom.platform.families.conditioning import CLASS
from darkroom.platform.families.family import Family, FullSize, register

TINY_LABELS = {i: name for i, name in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}
XL_LABELS = {i: f"class {i}" for i in range(1000)}


def call(pipe: Any, batch: Batch) -> Any:
    """The rows' class labels, each row's sampler noise from its own generator."""
    # DiTPipeline does not pass its generator to scheduler.step, so stochastic samplers would
    # draw from the global RNG and a row would depend on its batch-mates. Bind the per-row
    # generators to this call's step. With guidance the pipeline steps a doubled batch whose
    # second half it discards, so each row's generator serves both of its halves.
    settings, generators = batch.settings, batch.generators
    step_generators = generators + generators if settings.guidance_scale > 1 else generators
    scheduler = pipe.scheduler
    extra: dict[str, Any] = {"eta": settings.eta} if "eta" in step_params(scheduler) else {}
    if "generator" in step_params(scheduler):
        extra["generator"] = step_generators
    scheduler.step = functools.partial(type(scheduler).step, scheduler, **extra)
    try:
        return pipe(class_labels=[r.class_label for r in batch.requests],
                    guidance_scale=settings.guidance_scale, generator=generators,
                    num_inference_steps=settings.steps, output_type="np").images
    finally:
        del scheduler.step  # back to the class's own method


def class_table(pipe: Any) -> tuple[dict[str, int], int]:
    """(label name -> id, number of classes) of a loaded DiT pipeline."""
    return dict(pipe.labels), int(pipe.transformer.config.num_embeds_ada_norm)


def build_tiny() -> Any:
    """A random-init tiny `DiTPipeline` that learns variance, as DiT-XL/2."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from darkroom.platform.builders.tiny import tiny_vae

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
                       id2label=TINY_LABELS)
    pipe.register_to_config(id2label=TINY_LABELS)  # otherwise it is not saved
    return pipe


def build_dit_xl_2() -> Any:
    """DiT-XL/2 256 px with random weights: 1000 classes, DDIM scheduler."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from darkroom.platform.builders.fullsize import make, sd_vae

    transformer = make(
        DiTTransformer2DModel, num_attention_heads=16, attention_head_dim=72, in_channels=4,
        out_channels=8, num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
    )
    return DiTPipeline(transformer=transformer, vae=sd_vae(),
                       scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False),
                       id2label=dict(XL_LABELS))


FAMILY = register(Family(
    name="dit",
    description="class-conditional Diffusion Transformer (Peebles & Xie 2023)",
    pipeline="DiTPipeline",
    call=call,
    tiny=build_tiny,
    conditioning=CLASS,
    fixed_size=True,
    lora=False,
    denoiser="transformer",
    caches=("first_block", "magcache"),
    fullsize=(FullSize("dit-xl-2", build_dit_xl_2, labels=XL_LABELS),),
    tiny_labels=TINY_LABELS,
    class_table=class_table,
))
