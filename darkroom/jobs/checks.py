"""Checks of a job file beyond its types: do the models and prompt sources exist and fit?

Each check looks at a section that is valid on its own, so a file with a typo in one section still
gets its other sections checked: every problem is reported in one go. Nothing here loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from darkroom.jobs.spec import GenerationSpec, JobSpec, Problem, PromptSource
from darkroom.platform.errors import did_you_mean
from darkroom.platform.models import FAMILIES, PIPELINE_TO_FAMILY, ModelSpec


def semantic_problems(data: dict[str, Any], spec: JobSpec | None) -> list[Problem]:
    prompts = spec.prompts if spec else _section(PromptSource, data.get("prompts"))
    generation = spec.generation if spec else _section(GenerationSpec, data.get("generation", {}))
    models = list(enumerate(spec.models)) if spec else _models(data.get("models"))
    problems = _prompt_problems(prompts) if prompts else []
    for index, model in models:
        problems += _model_problems(index, model, prompts, generation)
    return problems


def _section(cls: type[BaseModel], value: Any) -> Any:
    try:
        return cls.model_validate(value)
    except ValidationError:
        return None


def _models(value: Any) -> list[tuple[int, ModelSpec]]:
    if not isinstance(value, list):
        return []
    found = [(i, _section(ModelSpec, entry)) for i, entry in enumerate(value)]
    return [(i, m) for i, m in found if m is not None]


def _prompt_problems(source: PromptSource) -> list[Problem]:
    from darkroom.jobs.prompts import PromptError, load_prompts

    try:
        load_prompts(source)
    except PromptError as err:
        return [Problem(err.path, err.message, err.value)]
    return []


def _model_problems(
    index: int, model: ModelSpec, prompts: PromptSource | None, generation: GenerationSpec | None
) -> list[Problem]:
    where = f"models.{index}"
    problem = _source_problem(model.model)
    if problem:
        return [Problem(f"{where}.model", problem, model.model)]
    family = family_of(model)
    problems = []
    if family and prompts:
        problems += _fit_problems(where, model, family, prompts)
    if family == "dit" and generation and (generation.width or generation.height):
        problems.append(Problem("generation.width", f"{model.label} is a DiT model: it makes "
                                "images of its native size only; leave width/height unset"))
    return problems


def _source_problem(name: str) -> str | None:
    """Why a model name cannot be found, or None (hub ids cannot be checked offline)."""
    from darkroom.platform.models import registry_names

    kind, _, rest = name.partition(":")
    if kind in ("tiny", "builtin", "random") and rest:
        known = registry_names()
        return None if name in known else f"unknown model `{name}`;{did_you_mean(name, known)}"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            return "folder is not a diffusers pipeline (no model_index.json)"
        return None
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return ("neither an existing folder, nor a hub id (org/name), nor a registry name "
                f"({', '.join(registry_names())})")
    return None


def family_of(model: ModelSpec) -> str | None:
    """The model's family when it can be told without loading or the network."""
    if model.family:
        return model.family
    kind, _, rest = model.model.partition(":")
    if kind == "tiny" and rest in FAMILIES:
        return rest
    if kind == "random":
        from darkroom.platform.fullsize import FULLSIZE_BUILDERS

        return FULLSIZE_BUILDERS[rest][0] if rest in FULLSIZE_BUILDERS else None
    folder = Path(model.model).expanduser()
    if kind == "builtin":
        from darkroom.platform.models import builtin_models

        folder = builtin_models().get(rest, Path("/nonexistent"))
    index = folder / "model_index.json"
    if index.is_file():
        return PIPELINE_TO_FAMILY.get(json.loads(index.read_text()).get("_class_name", ""))
    return None


def _fit_problems(
    where: str, model: ModelSpec, family: str, prompts: PromptSource
) -> list[Problem]:
    kind = prompts.kind
    conditioning = FAMILIES[family].conditioning
    if conditioning == "class" and not (kind == "classes" or prompts.columns.class_label):
        return [Problem(f"prompts.{kind}", f"{where} ({model.label}) is class-conditional: give "
                        "`prompts.classes` (ids or names) or map `prompts.columns.class_label`")]
    if conditioning == "text+control" and kind != "control_images":
        return [Problem(f"prompts.{kind}", f"{where} ({model.label}) is a ControlNet model: give "
                        "`prompts.control_images` (a folder) and `prompts.control_prompt`")]
    if conditioning == "text" and kind in ("classes", "control_images"):
        return [Problem(f"prompts.{kind}", f"{where} ({model.label}) is text-conditioned: give "
                        "`prompts.list` or `prompts.file`")]
    return []
