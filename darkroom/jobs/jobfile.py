"""Reading a job file: YAML, `KEY=VALUE` overrides, types, then the checks beyond types.

`load(path, overrides)` reports every problem of a job file at once (duplicate keys, unknown keys,
bad values, missing prompt files, unknown models, samplers that do not fit), each with its field
path, the bad value and the fix. Nothing is loaded or started before it succeeds, and nothing here
imports torch, diffusers or Ray.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from darkroom.jobs.checks import semantic_problems
from darkroom.jobs.spec import JobSpec, SweepSpec
from darkroom.platform.config import (
    Problem,
    SpecError,
    apply_overrides,
    read_yaml_file,
    try_validate,
)


def load(path: str | Path, overrides: Sequence[str] = (), deep: bool = True,
         reach: bool = True) -> JobSpec:
    """Read, override and validate a job file; prompt sources are resolved next to it."""
    data, problems = read_yaml_file(path, "job file")
    return validate(data, base=Path(path).parent, overrides=overrides, source=str(path),
                    problems=problems, deep=deep, reach=reach)


def validate(data: dict[str, Any], base: str | Path = ".", overrides: Sequence[str] = (),
             source: str = "job", problems: Sequence[Problem] = (),
             deep: bool = True, reach: bool = True) -> JobSpec:
    """A JobSpec from plain data, or a SpecError listing every problem found. `deep` reads a
    prompt file whole; otherwise its first rows (a job's workers check the rest). `reach` asks
    the output's store whether the job could write there (`checks.semantic_problems`)."""
    data = apply_overrides(copy.deepcopy(data), [sweep_shorthand(o) for o in overrides])
    _absolute_sources(data, Path(base))
    spec, found = try_validate(JobSpec, data)
    found = [*problems, *found, *semantic_problems(data, spec, deep, reach)]
    if found:
        raise SpecError(source, found)
    return spec  # type: ignore[return-value]


def sweep_shorthand(override: str) -> str:
    """`steps=4` -> `sweep.steps=[4]`: an override naming a sweep axis alone sets that axis
    (a single value becomes a one-value axis). Other overrides are left as they are."""
    key, sep, raw = override.partition("=")
    name = key.strip()
    if not sep or name not in SweepSpec.model_fields or name in JobSpec.model_fields:
        return override
    text = raw.strip()
    one_value = not text.startswith("[") or (name == "adapters" and not text.startswith("[["))
    return f"sweep.{name}=[{text}]" if one_value else f"sweep.{name}={text}"


def _absolute_sources(data: dict[str, Any], base: Path) -> None:
    """Prompt files and folders, and adapter files found next to the job file, are relative to
    the job file; made absolute for provenance."""
    prompts = data.get("prompts")
    if isinstance(prompts, dict):
        for key in ("file", "control_images", "images", "masks"):
            value = prompts.get(key)
            if isinstance(value, str) and value and not re.match(r"^[a-z0-9]+://", value):
                prompts[key] = str((base / Path(value).expanduser()).resolve())
    models = data.get("models")
    for model in models if isinstance(models, list) else []:
        loras = model.get("loras") if isinstance(model, dict) else None
        for lora in loras if isinstance(loras, list) else []:
            path = lora.get("path") if isinstance(lora, dict) else None
            # only what exists there: `org/name` may also be a hub id
            if isinstance(path, str) and path and (base / path).expanduser().exists():
                lora["path"] = str((base / path).expanduser().resolve())
