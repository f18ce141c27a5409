"""The model spec: how a config names a model and the options it loads with.

Imports only pydantic, the standard library and the family registry, so validating a file
never loads torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from darkroom.platform.errors import did_you_mean
from darkroom.platform.families import registered

DTYPE_NAMES = ("fp32", "fp16", "bf16")


class ControlSpec(BaseModel):
    """How a ControlNet row's image becomes the control image."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preprocessor: Literal["none", "canny"] = Field(
        "none", description="none: the row's image is the control image; canny: edges of it"
    )
    low_threshold: int = Field(100, ge=0, le=255, description="Canny lower hysteresis threshold")
    high_threshold: int = Field(200, ge=0, le=255, description="Canny upper hysteresis threshold")
    conditioning_scale: float = Field(1.0, ge=0, le=100, description="ControlNet residual scale")
    resize: Literal["stretch", "refuse"] = Field(
        "stretch", description="a control image of another size than the output: stretch it "
        "to the output size (recorded in the row's `input_images`), or refuse the row")

    @model_validator(mode="after")
    def _ordered(self) -> ControlSpec:
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"`low_threshold` ({self.low_threshold}) must not exceed `high_threshold` "
                f"({self.high_threshold})"
            )
        return self


class LoraSpec(BaseModel):
    """One LoRA adapter (Hu et al. 2022): a local file or folder, or a hub id."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the adapter's name in sweeps, outputs and serve requests")
    path: str = Field(description="a .safetensors file, a folder holding one, or a hub id")
    weight_name: str | None = Field(None, description="the weights file inside a folder or repo")
    scale: float = Field(1.0, ge=-10, le=10, description="its strength (0: the base model)")


class ModelSpec(BaseModel):
    """One model: where its weights are and how to load them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              protected_namespaces=())

    name: str | None = Field(None, description="label in outputs and MLflow; default: `model`")
    model: str = Field(description="tiny:FAMILY, builtin:NAME, a local folder, or a hub id")
    family: str | None = Field(
        None, description="a registered family (sd, sdxl, dit, controlnet, sd3, flux, t2i, ...); "
        "inferred from the folder's model_index.json when not given")
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
    max_sequence_length: int | None = Field(
        None, ge=1, le=4096, description="T5 tokens per prompt (sd3, flux, t2i); default: the "
        "pipeline's")
    true_cfg_scale: float | None = Field(
        None, ge=1, le=100, description="flux: true classifier-free guidance with the negative "
        "prompt (2 passes per step); unset: none")
    text_encoder_3: bool = Field(
        True, description="sd3: false (or null) drops the T5 encoder, a memory saver that "
        "changes the images")
    keep_unmasked: bool = Field(
        False, description="inpainting: put the source's pixels back outside the mask, so "
        "they equal the source exactly (the pipeline repaints the whole image through its VAE)")
    loras: list[LoraSpec] = Field(
        default_factory=list, max_length=32, description="LoRA adapters, loaded once and all "
        "active at their scales unless a sweep or request picks some")

    @field_validator("loras")
    @classmethod
    def _distinct_names(cls, loras: list[LoraSpec]) -> list[LoraSpec]:
        names = [lora.name for lora in loras]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"two adapters are named `{name}`; give each its own `name`")
        return loras

    @field_validator("family")
    @classmethod
    def _registered(cls, family: str | None) -> str | None:
        if family is not None and family not in registered():
            raise ValueError(f"unknown model family `{family}`;"
                             f"{did_you_mean(family, registered())}")
        return family

    @field_validator("text_encoder_3", mode="before")
    @classmethod
    def _null_drops_it(cls, value: object) -> object:
        return False if value is None else value

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

    def identity(self) -> dict:
        """The settings that define the model's images (hashed into run ids); options added
        after the first version are left out while unset, so older run ids stay valid."""
        dumped = self.model_dump(mode="json")
        dumped["control"].pop("resize")  # refusing a row changes no image: not part of the id
        for field in LATER_OPTIONS:
            if dumped[field] == type(self).model_fields[field].get_default(
                    call_default_factory=True):
                del dumped[field]
        return dumped


# options added after the first version: left out of run ids while unset
LATER_OPTIONS = ("max_sequence_length", "true_cfg_scale", "text_encoder_3", "loras",
                 "keep_unmasked")


def device_problems(model: ModelSpec, device: str) -> list[tuple[str, str]]:
    """(field, message) for what a model spec asks that an explicitly chosen device cannot do."""
    if device == "cpu" and model.dtype == "fp16":
        return [("dtype", "fp16 is not supported on CPU (half-precision convolutions are "
                          "missing or very slow there); use fp32 or bf16 on CPU, fp16 on a GPU")]
    return []
