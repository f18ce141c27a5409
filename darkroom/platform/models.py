"""Model families -> a loaded diffusers pipeline.

A model is named by a registry name (`tiny:sd`, `builtin:digits-dit`), a local folder, or a hub id
with an optional revision. Loading is diffusers' own `from_pretrained`; this module only decides
which pipeline class to use, checks the request fits the family, and turns every way loading can
fail into one clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from darkroom.platform.errors import ModelLoadError, UserError, did_you_mean

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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

    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocessor: Literal["none", "canny"] = Field(
        "none", description="none: the row's image is the control image; canny: edges of it"
    )
    low_threshold: int = Field(100, ge=0, le=255, description="Canny lower hysteresis threshold")
    high_threshold: int = Field(200, ge=0, le=255, description="Canny upper hysteresis threshold")
    conditioning_scale: float = Field(1.0, ge=0, description="ControlNet residual scale")

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

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

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
        return self.name or self.model


@dataclass
class LoadedModel:
    pipe: Any
    family: Family
    revision: str  # what the weights are: a hub revision, or the folder's path
    refiner: Any = None


def builtin_models() -> dict[str, Path]:
    try:
        from darkroom.platform.zoo import BUILTIN_MODELS
    except ImportError:
        return {}
    return dict(BUILTIN_MODELS)


def registry_names() -> list[str]:
    from darkroom.platform.fullsize import FULLSIZE_BUILDERS
    from darkroom.platform.tiny import TINY_BUILDERS

    return (
        [f"tiny:{f}" for f in TINY_BUILDERS]
        + [f"builtin:{n}" for n in builtin_models()]
        + [f"random:{n}" for n in FULLSIZE_BUILDERS]
    )


def resolve_source(model: str) -> tuple[str, bool]:
    """`model` -> (a local folder or hub id, whether it is local)."""
    from darkroom.platform.tiny import TINY_BUILDERS, tiny_folder

    kind, _, name = model.partition(":")
    if kind == "random" and name:
        from darkroom.platform.fullsize import FULLSIZE_BUILDERS

        if name not in FULLSIZE_BUILDERS:
            raise ModelLoadError(f"unknown model `{model}`;{did_you_mean(model, registry_names())}")
        return model, True  # built in memory by load_model
    if kind == "tiny" and name:
        if name not in TINY_BUILDERS:
            raise ModelLoadError(f"unknown model `{model}`;{did_you_mean(model, registry_names())}")
        return str(tiny_folder(name)), True
    if kind == "builtin" and name:
        builtins = builtin_models()
        if name not in builtins:
            raise ModelLoadError(f"unknown model `{model}`;{did_you_mean(model, registry_names())}")
        return str(builtins[name]), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists() and not (path / "config.json").exists():
            raise ModelLoadError(
                f"`{model}` is a folder but not a diffusers model (no model_index.json); "
                "save one with `pipe.save_pretrained(folder)` or `darkroom models tiny`"
            )
        return str(path), True
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"model `{model}` is neither a folder that exists nor a hub id (org/name) nor a "
            f"registry name ({', '.join(registry_names())})"
        )
    return model, False


def infer_family(spec: ModelSpec, source: str, local: bool) -> Family:
    if spec.family:
        return FAMILIES[spec.family]
    if spec.model.startswith("tiny:"):
        return FAMILIES[spec.model.split(":", 1)[1]]
    if spec.model.startswith("random:"):
        from darkroom.platform.fullsize import FULLSIZE_BUILDERS

        return FAMILIES[FULLSIZE_BUILDERS[spec.model.split(":", 1)[1]][0]]
    index = Path(source) / "model_index.json"
    if local and index.exists():
        class_name = json.loads(index.read_text()).get("_class_name", "")
    elif local:
        raise ModelLoadError(f"model `{spec.model}`: no model_index.json; set `family`")
    else:
        from diffusers import DiffusionPipeline

        try:
            config = DiffusionPipeline.load_config(source, revision=spec.revision)
            class_name = config["_class_name"]
        except Exception as err:  # any failure here means the same fix
            raise ModelLoadError(_hub_failure(spec.model, err)) from err
    if class_name not in PIPELINE_TO_FAMILY:
        raise ModelLoadError(
            f"model `{spec.model}` is a {class_name or 'unknown pipeline'}; supported: "
            f"{', '.join(PIPELINE_TO_FAMILY)}; set `family` to force one"
        )
    return FAMILIES[PIPELINE_TO_FAMILY[class_name]]


def _hub_failure(model: str, err: Exception) -> str:
    return (
        f"cannot load model `{model}` from the hub ({type(err).__name__}: {str(err)[:200]}); "
        "with no network, download it elsewhere, copy the folder here and set `model` to that "
        "folder (or fill HF_HOME's cache), or use tiny:sd / builtin:digits-ldm"
    )


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"`device` is {device!r} but no CUDA GPU is visible; use cpu or auto")
    return device


def check_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "fp16" and device == "cpu":
        raise UserError(
            "`dtype` fp16 is not supported on CPU (half-precision convolutions are missing or "
            "very slow there); use fp32 or bf16 on CPU, fp16 on a GPU"
        )
    return DTYPES[dtype]


def _from_pretrained(cls: Any, source: str, local: bool, spec: ModelSpec, **kwargs) -> Any:
    """diffusers' from_pretrained, with the hub reached at most once and failures made clear."""
    options = dict(
        revision=None if local else spec.revision,
        variant=spec.variant,
        use_safetensors=None if spec.allow_pickle else True,
        **kwargs,
    )
    if not local:
        try:  # a cached copy needs no network at all
            return cls.from_pretrained(source, local_files_only=True, **options)
        except Exception:  # not cached: try the hub once below
            pass
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(source, revision=spec.revision, timeout=10)
        except Exception as err:
            raise ModelLoadError(_hub_failure(source, err)) from err
    try:
        return cls.from_pretrained(source, **options)
    except (OSError, ValueError) as err:
        hint = "" if spec.allow_pickle else " (only safetensors weights load unless `allow_pickle`)"
        raise ModelLoadError(f"cannot load model `{source}`: {str(err)[:300]}{hint}") from err


def quiet_libraries() -> None:
    """No per-component progress bars or warnings from diffusers/transformers in actor logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    """Load the spec's pipeline (and refiner or ControlNet) onto `device` in the spec's dtype."""
    import diffusers

    quiet_libraries()
    device = resolve_device(device)
    dtype = check_dtype(spec.dtype, device)
    source, local = resolve_source(spec.model)
    family = infer_family(spec, source, local)
    if spec.refiner and family.name != "sdxl":
        raise UserError(f"`refiner` applies to sdxl models only; `{spec.model}` is {family.name}")
    if spec.controlnet and family.name != "controlnet":
        raise UserError(
            f"`controlnet` is set but `{spec.model}` is {family.name}; set `family: controlnet`"
        )
    extra: dict[str, Any] = {}
    if spec.controlnet:
        cn_source, cn_local = resolve_source(spec.controlnet)
        extra["controlnet"] = _from_pretrained(
            diffusers.ControlNetModel, cn_source, cn_local, spec, dtype=dtype
        )
    if source.startswith("random:"):
        from darkroom.platform.fullsize import build_fullsize

        pipe = build_fullsize(source.split(":", 1)[1], device, dtype)
    else:
        pipe = _from_pretrained(
            getattr(diffusers, family.pipeline), source, local, spec, dtype=dtype, **extra
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    refiner = None
    if spec.refiner:
        ref_source, ref_local = resolve_source(spec.refiner)
        refiner = _from_pretrained(
            diffusers.StableDiffusionXLImg2ImgPipeline, ref_source, ref_local, spec, dtype=dtype,
            **({"vae": pipe.vae} if hasattr(pipe, "vae") else {}),
        )
        refiner.set_progress_bar_config(disable=True)
        refiner.to(device)
    revision = spec.revision or ("local:" + source if local else "main")
    return LoadedModel(pipe=pipe, family=family, revision=revision, refiner=refiner)
