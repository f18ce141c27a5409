"""Checks of a job file beyond its types: do the models and prompt sources exist and fit?

Each check looks at a section that is valid on its own, so a file with a typo in one section still
gets its other sections checked: every problem is reported in one go. Nothing here loads a model;
model names are resolved by `platform.sources`, the same resolver the loader uses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from darkroom.jobs.prompts import Prompt, PromptError, count_prompts, load_prompts, peek_prompts
from darkroom.jobs.spec import (
    MAX_ROWS_PER_RUN,
    GenerationSpec,
    JobSpec,
    PromptSource,
    SweepSpec,
)
from darkroom.platform.config import Problem
from darkroom.platform.data import storage
from darkroom.platform.errors import ModelLoadError, did_you_mean
from darkroom.platform.models.caching import family_problem
from darkroom.platform.models.names import (
    class_names,
    is_hub_id,
    local_family,
    pipeline_class_name,
    sampler_kind,
)
from darkroom.platform.models.runtime import RuntimeSpec
from darkroom.platform.models.samplers import fitting
from darkroom.platform.models.spec import Family, ModelSpec, device_problems, option_problems

MAX_CLASS_PROBLEMS = 10


def semantic_problems(data: dict[str, Any], spec: JobSpec | None,
                      deep: bool = True) -> list[Problem]:
    """Every problem of the sections that are valid on their own (types were checked before).

    `deep` reads a prompt file whole (`darkroom validate`); otherwise only its first rows are
    checked here (`darkroom run`: its workers read and check the rest).
    """
    prompts = spec.prompts if spec else _section(PromptSource, data.get("prompts"))
    generation = spec.generation if spec else _section(GenerationSpec, data.get("generation", {}))
    runtime = spec.runtime if spec else _section(RuntimeSpec, data.get("runtime", {}))
    sweep = spec.sweep if spec else _section(SweepSpec, data.get("sweep", {}))
    models = list(enumerate(spec.models)) if spec else _models(data.get("models"))
    problems = _storage_problems(data, spec)
    loaded: list[Prompt] = []
    if prompts:
        try:
            loaded = load_prompts(prompts) if deep else peek_prompts(prompts)
            count = len(loaded) if deep or prompts.kind != "file" else (
                count_prompts(prompts) if str(prompts.file).endswith(".parquet") else 0)
        except PromptError as err:
            problems.append(Problem(err.path, err.message, err.value))
            count = 0
        rows = count * prompts.images_per_prompt
        if rows > MAX_ROWS_PER_RUN:
            problems.append(Problem(
                "prompts.images_per_prompt", f"{count} prompts x "
                f"{prompts.images_per_prompt} images = {rows} rows per run, more than "
                f"{MAX_ROWS_PER_RUN}; split the prompts over several jobs or use `limit`"))
    if runtime:
        problems += [Problem(f"runtime.{field}", message)
                     for field, message in runtime.device_problems()]
    for index, model in models:
        problems += _model_problems(index, model, prompts, loaded, generation, runtime)
        problems += _family_problems(index, model, prompts, generation, sweep)
    if sweep and models and not any(model.loras for _, model in models):
        for field, unset in (("lora_scale", [1.0]), ("adapters", None)):
            if getattr(sweep, field) != unset:
                problems.append(Problem(f"sweep.{field}", "no model of the job has `loras`: "
                                        "give a model its adapters, or drop this axis"))
    return problems


def _storage_problems(data: dict[str, Any], spec: JobSpec | None) -> list[Problem]:
    """The output's scheme is known, its library installed, and the storage options fit."""
    output = spec.output if spec else data.get("output")
    options = spec.storage_options if spec else data.get("storage_options")
    if not isinstance(output, str) or not isinstance(options, dict | None):
        return []
    reason = storage.check(output, options)
    if reason is None:
        return []
    field = "storage_options" if options and "options" in reason else "output"
    return [Problem(field, reason, output if field == "output" else options)]


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


def _model_problems(index: int, model: ModelSpec, prompts: PromptSource | None,
                    loaded: list[Prompt], generation: GenerationSpec | None,
                    runtime: RuntimeSpec | None) -> list[Problem]:
    where = f"models.{index}"
    try:
        family = local_family(model)
    except ModelLoadError as err:
        return [Problem(f"{where}.model", str(err), model.model)]
    problems = []
    if runtime:
        problems += [Problem(f"{where}.{field}", message)
                     for field, message in device_problems(model, runtime.device)]
    if family is None:  # a hub id: only the hub can tell its family
        return problems
    cache_problem = family_problem(runtime.cache if runtime else None, family.name)
    if cache_problem:
        problems.append(Problem("runtime.cache", f"{where} ({model.label}): {cache_problem}"))
    if prompts:
        problems += _fit_problems(where, model, family, prompts)
    if family.conditioning == "class" and loaded and prompts:
        problems += _class_problems(where, model, loaded, prompts.kind)
    if family.name == "dit" and generation and (generation.width or generation.height):
        problems.append(Problem("generation.width", f"{model.label} is a DiT model: it makes "
                                "images of its native size only; leave width/height unset"))
    return problems


def _family_problems(index: int, model: ModelSpec, prompts: PromptSource | None,
                     generation: GenerationSpec | None, sweep: SweepSpec | None) -> list[Problem]:
    """What the model's family cannot take: samplers of the other kind, options of other
    families, sizes off its latent grid, negative prompts or micro-conditioning it has no use
    for, arguments its pipeline class does not accept (t2i)."""
    where = f"models.{index}"
    try:
        family = local_family(model)
    except ModelLoadError:
        return []  # reported by _model_problems
    if family is None:
        return []
    problems = [Problem(f"{where}.{field}", message)
                for field, message in option_problems(model, family)]
    problems += _adapter_problems(where, model, sweep)
    kind = sampler_kind(model, family)
    if sweep and kind:
        fits = fitting(kind, family.unfit)
        for i, sampler in enumerate(sweep.sampler):
            if sampler.name not in fits:
                problems.append(Problem(
                    f"sweep.sampler.{i}.name", f"`{sampler.name}` does not fit {where} "
                    f"({model.label}, {family.name}); fitting: {', '.join(fits)}"))
    if generation:
        problems += _generation_problems(where, model, family, prompts, generation, sweep)
    return problems


def _adapter_problems(where: str, model: ModelSpec, sweep: SweepSpec | None) -> list[Problem]:
    """Adapter files that are not there, and adapter sets naming adapters the model lacks."""
    from darkroom.platform.models.adapters import weights_file

    problems = []
    for i, lora in enumerate(model.loras):
        if not is_hub_id(lora.path):
            try:
                weights_file(lora, model.allow_pickle)
            except ModelLoadError as err:
                problems.append(Problem(f"{where}.loras.{i}.path", str(err), lora.path))
    if sweep and sweep.adapters and model.loras:
        known = [lora.name for lora in model.loras]
        for i, names in enumerate(sweep.adapters):
            for name in names:
                if name not in known:
                    problems.append(Problem(f"sweep.adapters.{i}", f"{where} ({model.label}) "
                                            f"has no adapter `{name}`;{did_you_mean(name, known)}"))
    return problems


def _generation_problems(where: str, model: ModelSpec, family: Family,
                         prompts: PromptSource | None, generation: GenerationSpec,
                         sweep: SweepSpec | None) -> list[Problem]:
    problems = []
    for side in ("width", "height"):
        value = getattr(generation, side)
        if value and value % family.size_multiple:
            problems.append(Problem(f"generation.{side}", f"{where} ({model.label}) is "
                                    f"{family.name}: sides must be multiples of "
                                    f"{family.size_multiple}", value))
    if generation.call_options() and family.name != "sdxl":
        problems.append(Problem(f"generation.{next(iter(generation.call_options()))}",
                                f"micro-conditioning applies to sdxl models only; {where} "
                                f"({model.label}) is {family.name}"))
    negatives = bool(generation.negative_prompt or (prompts and prompts.columns.negative_prompt))
    if negatives and family.name == "flux" and not model.true_cfg_scale:
        problems.append(Problem(f"{where}.true_cfg_scale", f"{model.label} is flux "
                                "(guidance-distilled): negative prompts need true CFG; set "
                                "`true_cfg_scale` (e.g. 4.0) or drop the negative prompt"))
    if family.name == "t2i":
        problems += _signature_problems(where, model, negatives, sweep)
    return problems


def _signature_problems(where: str, model: ModelSpec, negatives: bool,
                        sweep: SweepSpec | None) -> list[Problem]:
    """Arguments a t2i pipeline class does not take, from its call signature."""
    class_name = pipeline_class_name(model)
    if not class_name:
        return []
    import diffusers  # only for t2i models: their class is known only by name until here

    from darkroom.platform.families.calls import call_parameters

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return [Problem(f"{where}.model", f"{class_name} is not a pipeline class of the "
                        f"installed diffusers {diffusers.__version__}", model.model)]
    takes = call_parameters(cls)
    asked = {"generation.negative_prompt": ("negative_prompt", negatives),
             "sweep.eta": ("eta", bool(sweep and any(sweep.eta))),
             f"{where}.max_sequence_length": ("max_sequence_length",
                                              model.max_sequence_length is not None)}
    return [Problem(field, f"{class_name} ({model.label}) takes no `{argument}`; leave it unset")
            for field, (argument, given) in asked.items() if given and argument not in takes]


def _fit_problems(where: str, model: ModelSpec, family: Family,
                  prompts: PromptSource) -> list[Problem]:
    kind = prompts.kind
    conditioning = family.conditioning
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


def _class_problems(where: str, model: ModelSpec, prompts: list[Prompt],
                    kind: str) -> list[Problem]:
    """Class names and ids that the model's own label table refutes (when it is readable)."""
    names = class_names(model)
    if names is None:
        return []
    classes = max(names.values()) + 1
    problems = []
    for index, prompt in enumerate(prompts):
        label = prompt.class_label
        if label is None:
            continue
        field = f"prompts.classes.{index}" if kind == "classes" else (
            f"prompts.{kind} (prompt {prompt.prompt_id})")
        text = str(label).strip()
        if text.lstrip("-").isdigit():
            if not 0 <= int(text) < classes:
                problems.append(Problem(field, f"class id {text} is outside 0..{classes - 1} of "
                                        f"{where} ({model.label})", label))
        elif text not in names:
            problems.append(Problem(field,
                                    f"{where} ({model.label}) has no class named {text!r};"
                                    f"{did_you_mean(text, names)}", label))
    if len(problems) > MAX_CLASS_PROBLEMS:
        more = len(problems) - MAX_CLASS_PROBLEMS
        problems = problems[:MAX_CLASS_PROBLEMS] + [
            Problem("prompts", f"... and {more} more unknown class label(s)")]
    return problems
