"""Does a model fit what a config asks of it? One function for job files and serve files.

`fit_problems` takes a model spec, the runtime and what the config asks the model to do (the
samplers, sizes, call options, negative prompts and eta, each with the field that asks for it)
and returns every problem with its field path, without loading the model: the family's rules
(`Family` methods), the same ones the generator applies to each row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from darkroom.platform.config import Problem
from darkroom.platform.errors import ModelLoadError
from darkroom.platform.families import Family, registered
from darkroom.platform.models.names import local_family, pipeline_class_name, sampler_kind
from darkroom.platform.models.spec import ModelSpec, device_problems


@dataclass(frozen=True)
class Asked:
    """What a config asks of a model, each value keyed by the field path that asks for it."""

    samplers: Mapping[str, str] = field(default_factory=dict)  # field -> sampler name
    sizes: Mapping[str, int] = field(default_factory=dict)  # "...width"/"...height" -> side
    call_options: Mapping[str, str] = field(default_factory=dict)  # field -> option name
    negative_prompt: str | None = None  # the field that gives one
    arguments: Mapping[str, str] = field(default_factory=dict)  # field -> call argument (eta)
    edits: Mapping[str, str] = field(default_factory=dict)  # field -> edit setting (strength)


def fit_problems(where: str, model: ModelSpec, runtime: Any, asked: Asked) -> list[Problem]:
    """Every problem of `model` (at field path `where`) with the runtime and what is asked."""
    try:
        family = local_family(model)
    except ModelLoadError as err:
        return [Problem(f"{where}.model", str(err), model.model)]
    problems = []
    if runtime is not None:
        problems += [Problem(f"{where}.{name}", message)
                     for name, message in device_problems(model, runtime.device)]
    if family is None:  # a hub id: only the hub can tell its family
        return problems
    who = family.who(model.label)
    problems += [Problem(f"{where}.{name}", message)
                 for name, message in family.option_problems(model)]
    if runtime is not None and (problem := family.cache_problem(runtime.cache)):
        problems.append(Problem("runtime.cache", f"{where} ({model.label}): {problem}"))
    kind = sampler_kind(model, family)
    for path, sampler in asked.samplers.items():
        if problem := family.sampler_problem(sampler, kind, f"{where}, {model.label}"):
            problems.append(Problem(path, problem))
    problems += _size_problems(family, asked.sizes, f"{where} ({who})")
    options = {name: path for path, name in asked.call_options.items()}
    if options and (problem := family.call_option_problem(options, f"{where} ({who})")):
        problems.append(Problem(next(iter(asked.call_options)), problem))
    try:
        pipeline = (_pipeline_class(model, family) if asked.negative_prompt or asked.arguments
                    else None)
    except ModelLoadError as err:
        return [*problems, Problem(f"{where}.model", str(err), model.model)]
    if asked.negative_prompt and (problem := family.negative_problem(model, pipeline, who)):
        # where the fix goes: the model's option that enables negatives, else the prompt
        path = f"{where}.{family.negative_field}" if family.negative_field else \
            asked.negative_prompt
        problems.append(Problem(path, problem))
    for path, name in asked.edits.items():
        if name not in family.edits:
            takers = [f.name for f in registered().values() if name in f.edits]
            problems.append(Problem(path, f"`{name}` is for the editing models that take it "
                                    f"({', '.join(takers)}); {who} does not: drop this axis"))
    for path, argument in asked.arguments.items():
        if problem := family.argument_problem(argument, pipeline, model.label):
            problems.append(Problem(path, problem))
    return problems


def _size_problems(family: Family, sizes: Mapping[str, int], who: str) -> list[Problem]:
    by_side = {path.rsplit(".", 1)[-1]: (path, value) for path, value in sizes.items()}
    width = by_side.get("width", (None, None))[1]
    height = by_side.get("height", (None, None))[1]
    return [Problem(by_side[side][0], message, by_side[side][1])
            for side, message in family.size_problems(width, height, family.grid(), who)]


def _pipeline_class(model: ModelSpec, family: Family) -> type | None:
    """The pipeline class, when the family reads its call from it (t2i) and it is known here."""
    if family.pipeline:
        return None
    name = pipeline_class_name(model)
    if not name:
        return None
    import diffusers  # only for such models: their class is known only by name until here

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelLoadError(f"{name} is not a pipeline class of the installed diffusers "
                             f"{diffusers.__version__}")
    return cls
