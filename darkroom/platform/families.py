"""Model families and the model spec: what a family needs, and how a config names a model.

Imports only pydantic and the standard library, so validating a file never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DTYPE_NAMES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Family:
    """What a family needs: its diffusers pipeline class and how requests condition it."""

    name: str
    pipeline: str  # diffusers pipeline class name
    conditioning: Literal["text", "class", "text+control"]
    description: str


FAMILIES: dict[str, Family] = {
    "sd": Family("sd", "StableDiffusionPipeline", "text",
                 "Latent Diffusion / Stable Diffusion 1.x-2.x (Rombach et al. 2022)"),
    "sdxl": Family("sdxl", "StableDiffusionXLPipeline", "text",
                   "SDXL with optional refiner hand-off (Podell et al. 2023)"),
    "dit": Family("dit", "DiTPipeline", "class",
                  "class-conditional Diffusion Transformer (Peebles & Xie 2023)"),
    "controlnet": Family("controlnet", "StableDiffusionControlNetPipeline", "text+control",
                         "Stable Diffusion + ControlNet (Zhang et al. 2023)"),
}
PIPELINE_TO_FAMILY = {f.pipeline: f.name for f in FAMILIES.values()}
PIPELINE_TO_FAMILY["LDMTextToImagePipeline"] = "sd"


class ControlSpec(BaseModel):
    """How a ControlNet row's image becomes the control image."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preprocessor: Literal["none", "canny"] = Field(
        "none", description="none: the row's image is the control image; canny: edges of it"
    )
    low_threshold: int = Field(100, ge=0, le=255, description="Canny lower hysteresis threshold")
    high_threshold: int = Field(200, ge=0, le=255, description="Canny upper hysteresis threshold")
    conditioning_scale: float = Field(1.0, ge=0, le=100, description="ControlNet residual scale")

    @model_validator(mode="after")
    def _ordered(self) -> ControlSpec:
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"`low_threshold` ({self.low_threshold}) must not exceed `high_threshold` "
                f"({self.high_threshold})"
            )
        return self


class ModelSpec(BaseModel):
    """One model: where its weights are and how to load them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              protected_namespaces=())

    name: str | None = Field(None, description="label in outputs and MLflow; default: `model`")
    model: str = Field(description="tiny:FAMILY, builtin:NAME, a local folder, or a hub id")
    family: Literal["sd", "sdxl", "dit", "controlnet"] | None = Field(
        None, description="inferred from the folder's model_index.json when not given"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    variant: str | None = Field(None, description="weights variant, e.g. fp16")
    allow_pickle: bool = Field(False, description="allow .bin/.ckpt weights (unsafe pickle)")
    controlnet: str | None = Field(None, description="ControlNet weights (folder or hub id)")
    control: ControlSpec = Field(default_factory=ControlSpec)
    refiner: str | None = Field(None, description="SDXL refiner (folder or hub id)")
    refiner_switch: float = Field(
        0.8, gt=0, lt=1, description="fraction of steps the base runs before the refiner"
    )

    @field_validator("model")
    @classmethod
    def _not_empty(cls, model: str) -> str:
        if not model.strip():
            raise ValueError(
                "`model` is empty; name tiny:sd, builtin:digits-dit, a folder or a hub id"
            )
        return model

    @property
    def label(self) -> str:
        """The model's name in outputs and MLflow."""
        return self.name or self.model


def device_problems(model: ModelSpec, device: str) -> list[tuple[str, str]]:
    """(field, message) for what a model spec asks that an explicitly chosen device cannot do."""
    if device == "cpu" and model.dtype == "fp16":
        return [("dtype", "fp16 is not supported on CPU (half-precision convolutions are "
                          "missing or very slow there); use fp32 or bf16 on CPU, fp16 on a GPU")]
    return []
