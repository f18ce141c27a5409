"""What the image-editing families share: their pipeline call, read from the pipeline's own
signature, and building a tiny edit pipeline from a base family's tiny components.

Edits keep per-row noise like every family: the source image is encoded, noised and denoised
with the row's own generator (and its own sample of the VAE's latent distribution), so a row's
edit does not depend on its batch-mates.
"""

from __future__ import annotations

import inspect
from typing import Any

from darkroom.platform.families.calling import Batch, call_parameters, row_noise


def call(pipe: Any, batch: Batch) -> Any:
    """Any diffusers edit pipeline (img2img, inpainting, instruction edits): the prompts, the
    source images (and masks), and what else its `__call__` takes."""
    takes = call_parameters(type(pipe))
    s = batch.settings
    kwargs: dict[str, Any] = {
        "prompt": batch.prompts, "image": [r.image for r in batch.requests],
        "num_inference_steps": s.steps, "guidance_scale": s.guidance_scale,
        "generator": batch.generators, "output_type": "np", **batch.hooks,
    }
    if any(r.mask is not None for r in batch.requests):
        kwargs["mask_image"] = [r.mask for r in batch.requests]
    optional = {
        "width": s.width, "height": s.height, "strength": s.strength,
        "image_guidance_scale": s.image_guidance_scale, "eta": s.eta,
        "max_sequence_length": batch.spec.max_sequence_length,
        "true_cfg_scale": batch.spec.true_cfg_scale,
        # the asked size, not the nearest of the pipeline's preferred resolutions, nor one
        # scaled to a default area of 1024 x 1024 (Kontext)
        "_auto_resize": False, "max_area": s.width * s.height,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None and k in takes})
    if "negative_prompt" in takes and any(batch.negative_prompts):
        kwargs["negative_prompt"] = batch.negative_prompts
    with row_noise(pipe.scheduler, batch.generators):
        images = pipe(**kwargs).images
    if batch.spec.keep_unmasked and "mask_image" in kwargs:
        images = keep_unmasked(images, batch)
    return images


def keep_unmasked(images: Any, batch: Batch) -> Any:
    """The source's pixels back outside each mask (where the mask is black), so they equal the
    source exactly: inpainting pipelines repaint the whole image through the VAE."""
    import numpy as np

    out = []
    for image, request in zip(images, batch.requests, strict=True):
        keep = np.asarray(request.mask, dtype=np.float32)[..., None] / 255.0 < 0.5
        source = np.asarray(request.image.convert("RGB"), dtype=np.float32) / 255.0
        out.append(np.where(keep, source, image))
    return np.stack(out)


def negative_rule(spec: Any, pipeline_class: type | None) -> str | None:
    """A negative prompt only where the pipeline's call takes one (Flux-based ones with true
    CFG: `true_cfg_scale`)."""
    if pipeline_class is None:
        return None
    takes = call_parameters(pipeline_class)
    if "negative_prompt" not in takes:
        return f"takes no negative prompt ({pipeline_class.__name__}); drop it"
    if "true_cfg_scale" in takes and not spec.true_cfg_scale:
        return ("is guidance-distilled: negative prompts need true CFG; set `true_cfg_scale` "
                "(e.g. 4.0) or drop the negative prompt")
    return None


def from_base(cls: type, base: Any) -> Any:
    """An edit pipeline of class `cls` made of a base pipeline's components (the ones `cls`
    takes), e.g. an img2img pipeline with a text-to-image model's weights."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in base.components.items() if k in accepted})
