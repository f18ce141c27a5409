"""Model families -> a loaded diffusers pipeline.

A model is named by a registry name (`tiny:sd`, `builtin:digits-dit`), a local folder, or a hub id
with an optional revision. Loading is diffusers' own `from_pretrained`; this module only decides
which pipeline class to use, checks the request fits the family, and turns every way loading can
fail into one clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from darkroom.platform.errors import ModelLoadError, UserError
from darkroom.platform.families import Family
from darkroom.platform.models.names import (
    family_of_pipeline,
    local_family,
    resolve_source,
)
from darkroom.platform.models.spec import DTYPE_NAMES, ModelSpec, device_problems

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


@dataclass
class LoadedModel:
    """A loaded pipeline with its family, what its weights are, and an optional SDXL refiner."""

    pipe: Any
    family: Family
    revision: str  # what the weights are: a hub revision, or the folder's path
    refiner: Any = None


def infer_family(spec: ModelSpec) -> Family:
    """The spec's family: given, from the registry or local folder, else from the hub's index."""
    family = local_family(spec)
    if family is not None:
        return family
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(spec.model, revision=spec.revision)
    except Exception as err:  # any failure here means the same fix
        raise ModelLoadError(_hub_failure(spec.model, err)) from err
    return family_of_pipeline(spec.model, config)


def _hub_failure(model: str, err: Exception) -> str:
    from darkroom.platform.offline import offline_reason

    why = offline_reason() or f"{type(err).__name__}: {str(err)[:200]}"
    return (
        f"cannot load model `{model}` from the hub ({why}); "
        "with no network, download it elsewhere, copy the folder here and set `model` to that "
        "folder (or fill HF_HOME's cache), or use tiny:sd / builtin:digits-ldm"
    )


def resolve_device(device: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; an explicit cuda without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"`device` is {device!r} but no CUDA GPU is visible; use cpu or auto")
    return device


def check_dtype(spec: ModelSpec, device: str) -> torch.dtype:
    """The torch dtype of the spec, refused where the device cannot run it."""
    for field, message in device_problems(spec, device):
        raise UserError(f"`{field}`: {message}")
    return DTYPES[spec.dtype]


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
        except Exception as err:  # not cached: try the hub once below, unless offline
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                raise ModelLoadError(_hub_failure(source, err)) from err
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


def load_component(cls: Any, name: str, spec: ModelSpec, dtype: torch.dtype) -> Any:
    """A single diffusers model (ControlNet weights, ...) from a folder or hub id."""
    source, local = resolve_source(name, marker="config.json")
    return _from_pretrained(cls, source, local, spec, dtype=dtype)


def load_model(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    """Load the spec's pipeline (and refiner or components) onto `device` in the spec's dtype."""
    import diffusers

    from darkroom.platform.quiet import quiet_libraries

    quiet_libraries()
    device = resolve_device(device)
    dtype = check_dtype(spec, device)
    source, local = resolve_source(spec.model)
    if spec.model.startswith("tiny:"):
        from darkroom.platform.models.builds import tiny_folder

        source = str(tiny_folder(spec.model.split(":", 1)[1]))
    family = infer_family(spec)
    for _field, message in family.option_problems(spec):  # e.g. a refiner on a non-SDXL
        raise UserError(message)
    extra = family.load_options(spec, dtype)
    for option, class_name in family.components.items():
        if getattr(spec, option):
            extra[option] = load_component(getattr(diffusers, class_name), getattr(spec, option),
                                           spec, dtype)
    if source.startswith("random:"):
        from darkroom.platform.models.builds import build_fullsize

        pipe = build_fullsize(source.split(":", 1)[1], device, dtype)
    else:
        # a family without a class of its own (t2i): the folder's, as diffusers picks it
        cls = (getattr(diffusers, family.pipeline) if family.pipeline
               else diffusers.DiffusionPipeline)
        pipe = _from_pretrained(cls, source, local, spec, dtype=dtype, **extra)
    if family.check_loaded is not None:
        family.check_loaded(pipe, spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    refiner = None
    if spec.refiner:
        ref_source, ref_local = resolve_source(spec.refiner)
        refiner = _from_pretrained(
            getattr(diffusers, family.refiner), ref_source, ref_local, spec, dtype=dtype,
            **({"vae": pipe.vae} if hasattr(pipe, "vae") else {}),
        )
        refiner.set_progress_bar_config(disable=True)
        refiner.to(device)
    revision = spec.revision or ("local:" + source if local else "main")
    return LoadedModel(pipe=pipe, family=family, revision=revision, refiner=refiner)
