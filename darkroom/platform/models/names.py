"""Where a model name points, and what can be told about it without loading it.

The one resolver of model names: registry names (`tiny:sd`, `builtin:digits-dit`,
`random:sdxl`), local diffusers folders and hub ids. `validate` and the loader both use it, so a
name that passes one passes the other. Imports only the standard library and the family
registry: no torch, no network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from darkroom.platform.errors import ModelLoadError, did_you_mean
from darkroom.platform.families import (
    Family,
    family_named,
    fullsize_families,
    pipeline_families,
    registered,
)

TINY_FORMAT = "3"  # bump when a tiny builder changes, so cached folders are rebuilt
PIPELINE_INDEX = "model_index.json"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


def cache_root() -> Path:
    """Where Darkroom caches what it builds (tiny pipelines, reference statistics)."""
    return Path(os.environ.get("DARKROOM_CACHE", Path.home() / ".cache" / "darkroom"))


def tiny_path(family: str) -> Path:
    """The cache folder of `tiny:<family>` (built on first load by `models.builds`)."""
    return cache_root() / "tiny" / f"{family}-v{TINY_FORMAT}"


def builtin_models() -> dict[str, Path]:
    """`builtin:<name>` -> the bundled folder (the zoo's trained digits models)."""
    from darkroom.platform.zoo import BUILTIN_MODELS

    return dict(BUILTIN_MODELS)


def registry_names() -> list[str]:
    """Every registry model name: tiny:*, builtin:*, random:*."""
    return ([f"tiny:{f}" for f in registered()]
            + [f"builtin:{n}" for n in builtin_models()]
            + [f"random:{n}" for n in fullsize_families()])


def looks_local(name: str) -> bool:
    """Whether a name means a path on this machine: it exists, or it is written as one."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~"))


def is_hub_id(name: str) -> bool:
    """Whether a name is a hub id (`org/name`) rather than a path on this machine."""
    return not looks_local(name) and name.count("/") == 1


def resolve_source(model: str, marker: str = PIPELINE_INDEX) -> tuple[str, bool]:
    """`model` -> (a local folder, `random:NAME` or a hub id; whether it is local).

    A local folder must hold `marker`: model_index.json for a pipeline, config.json for a single
    component such as ControlNet weights. Hub ids cannot be checked offline and pass as they are.
    """
    kind, _, name = model.partition(":")
    known = {"tiny": registered(), "builtin": builtin_models(), "random": fullsize_families()}
    if kind in known and name:
        if name not in known[kind]:
            raise ModelLoadError(f"unknown model `{model}`;{did_you_mean(model, registry_names())}")
        if kind == "tiny":
            return str(tiny_path(name)), True
        if kind == "builtin":
            return str(builtin_models()[name]), True
        return model, True  # built in memory by the loader
    path = Path(model).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            what = "a diffusers pipeline" if marker == PIPELINE_INDEX else "a diffusers model"
            raise ModelLoadError(
                f"`{model}` is a folder but not {what} (no {marker}); save one with "
                "`save_pretrained(folder)` or `darkroom models tiny`"
            )
        return str(path), True
    if not is_hub_id(model):
        raise ModelLoadError(
            f"model `{model}` is neither a folder that exists nor a hub id (org/name) nor a "
            f"registry name ({', '.join(registry_names())})"
        )
    return model, False


def _local_json(spec: Any, relative: Path | str) -> dict[str, Any] | None:
    """A JSON file inside the model's folder, when the model is a folder on this machine."""
    if spec.model.partition(":")[0] in ("tiny", "random"):
        return None
    source, local = resolve_source(spec.model)
    path = Path(source) / relative
    return json.loads(path.read_text()) if local and path.is_file() else None


def pipeline_index(spec: Any) -> dict[str, Any] | None:
    """The model's model_index.json when it is on this machine (not for tiny/random names)."""
    return _local_json(spec, PIPELINE_INDEX)


def local_family(spec: Any) -> Family | None:
    """The spec's family when it can be told offline; None for a hub id without `family`."""
    if spec.family:
        return family_named(spec.family)
    kind, _, name = spec.model.partition(":")
    if kind == "tiny":
        resolve_source(spec.model)  # an unknown name fails here
        return family_named(name)
    if kind == "random":
        resolve_source(spec.model)
        return family_named(fullsize_families()[name])
    _, local = resolve_source(spec.model)
    if not local:
        return None
    return family_of_pipeline(spec.model, pipeline_index(spec) or {})


def family_of_pipeline(model: str, index: dict[str, Any]) -> Family:
    """The family of a pipeline from its model_index.json's `_class_name`: a row of the
    registry, else the family that claims such names (`edit` for "...Img2Img...", "...Edit..."),
    else `t2i` (any other diffusers pipeline; loading checks what its call takes)."""
    class_name = index.get("_class_name", "")
    if not class_name.endswith("Pipeline"):
        raise ModelLoadError(
            f"model `{model}`: model_index.json names no diffusers pipeline class "
            f"({class_name or 'none'}); set `family` to force one"
        )
    known = pipeline_families().get(class_name)
    if known is None:  # outside the table: a family that claims such classes, else t2i
        known = next((f.name for f in registered().values()
                      if any(part in class_name for part in f.claims)), "t2i")
    return family_named(known)


def pipeline_class_name(spec: Any) -> str | None:
    """The diffusers pipeline class a model loads as, when known offline."""
    family = local_family(spec)
    if family is not None and family.pipeline:
        return family.pipeline
    if spec.model.startswith("tiny:") and family is not None:
        return family.tiny_pipeline or None
    return (pipeline_index(spec) or {}).get("_class_name")


def sampler_kind(spec: Any, family: Family) -> str | None:
    """The samplers a model takes, "flow" or "diffusion" (for a family that reads it from the
    model, its folder's scheduler config); None when that cannot be told offline (a hub id)."""
    if family.samplers != "any":
        return family.samplers
    if spec.model.startswith("tiny:"):
        return "diffusion"  # the tiny models of such families use DPM-Solver
    return family.sampler_kind(_local_json(spec, SCHEDULER_CONFIG))


def class_names(spec: Any) -> dict[str, int] | None:
    """A class-conditional model's label names -> ids, when readable offline (else None).

    Names split on commas as DiTPipeline does ("tench, Tinca tinca" is two names of class 0).
    """
    kind, _, name = spec.model.partition(":")
    id2label: Any
    if kind == "tiny":
        id2label = family_named(name).tiny_labels if name in registered() else None
    elif kind == "random":
        entries = [e for f in registered().values() for e in f.fullsize if e.name == name]
        id2label = entries[0].labels if entries else None
    else:
        id2label = (pipeline_index(spec) or {}).get("id2label")
    if not id2label:
        return None
    names = {}
    for key, value in id2label.items():
        for label in str(value).split(","):
            names[label.strip()] = int(key)
    return names
