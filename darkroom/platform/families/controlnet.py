"""Stable Diffusion + ControlNet (Zhang et al. 2023): an SD pipeline steered by a control image
(edges, depth, pose, ...) through a copy of the UNet's encoder."""

from __future__ import annotations

from typing import Any

from darkroom.platform.families.calling import Batch
from darkroom.platform.families.conditioning import CONTROL
from darkroom.platform.families.family import Family, FullSize, register


def call(pipe: Any, batch: Batch) -> Any:
    """The rows' prompts and control images at the spec's conditioning scale."""
    return pipe(**batch.common(), negative_prompt=batch.negative_prompts,
                image=[r.control_image for r in batch.requests], eta=batch.settings.eta,
                controlnet_conditioning_scale=batch.spec.control.conditioning_scale).images


def build_tiny() -> Any:
    """A tiny SD pipeline with a ControlNet made from its UNet, the zero convolutions
    randomised so that the control image changes the output."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from darkroom.platform.families.sd import build_tiny as build_sd

    sd = build_sd()
    controlnet = ControlNetModel.from_unet(
        sd.unet, conditioning_embedding_out_channels=(8, 8, 8, 8)
    )
    # ControlNet starts from zero convolutions, under which the control image has no effect at
    # all; random ones let tests see the control image change the output.
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    for zero_conv in zero_convs:
        torch.nn.init.normal_(zero_conv.weight, std=0.05)
    return StableDiffusionControlNetPipeline(
        **{k: v for k, v in sd.components.items() if k != "image_encoder"},
        controlnet=controlnet,
    )


def build_sd15_controlnet() -> Any:
    """SD 1.5 with a ControlNet made from its UNet, random weights."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from darkroom.platform.builders.fullsize import make
    from darkroom.platform.families.sd import build_sd15

    sd = build_sd15()
    controlnet = make(ControlNetModel.from_unet, sd.unet)
    return StableDiffusionControlNetPipeline(
        **{k: v for k, v in sd.components.items() if k != "image_encoder"}, controlnet=controlnet
    )


FAMILY = register(Family(
    name="controlnet",
    description="Stable Diffusion + ControlNet (Zhang et al. 2023)",
    pipeline="StableDiffusionControlNetPipeline",
    call=call,
    tiny=build_tiny,
    conditioning=CONTROL,
    options=("controlnet",),
    components={"controlnet": "ControlNetModel"},  # `controlnet`: its weights
    fullsize=(FullSize("sd15-controlnet", build_sd15_controlnet),),
))
