"""Checks of a job file beyond its types: do the models and prompt sources exist and fit?

Each check looks at a section that is valid on its own, so a file with a typo in one section still
gets its other sections checked: every problem is reported in one go. Nothing here loads a model:
what a model can do is its family's rules (`platform.models.fit`, the same for serve files), and
model names are resolved by `platform.models.names`, the same resolver the loader uses.
"""

from __future__ import annotations

import io
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from darkroom.jobs.prompts import Prompt, PromptError, count_prompts, load_prompts, peek_prompts
from darkroom.jobs.spec import (
    MAX_ROWS_PER_RUN,
    MAX_RUNS,
    GenerationSpec,
    JobSpec,
    PromptSource,
    SweepSpec,
)
from darkroom.platform.config import Problem
from darkroom.platform.data import preflight, storage
from darkroom.platform.errors import ModelLoadError, did_you_mean
from darkroom.platform.families.conditioning import is_class_id
from darkroom.platform.models.fit import Asked, fit_problems
from darkroom.platform.models.names import class_names, is_hub_id, local_family
from darkroom.platform.models.runtime import RuntimeSpec
from darkroom.platform.models.spec import ModelSpec

MAX_CLASS_PROBLEMS = 10
MAX_NAME_BYTES = 255  # a file name on every common filesystem, and an object key's segment
MAX_PATH_BYTES = 4096  # Linux's PATH_MAX
MAX_KEY_BYTES = 1024  # an S3 (and GCS) object key, bucket included here for a margin


def semantic_problems(data: dict[str, Any], spec: JobSpec | None,
                      deep: bool = True, reach: bool = True) -> list[Problem]:
    """Every problem of the sections that are valid on their own (types were checked before).

    `deep` reads a prompt file whole (`darkroom validate`); otherwise only its first rows are
    checked here (`darkroom run`: its workers read and check the rest). `reach` asks the output's
    store (or the local folder) whether the job could write there, writing nothing; `submit`
    leaves that to the cluster, whose credentials and mounts are not this machine's.
    """
    prompts = spec.prompts if spec else _section(PromptSource, data.get("prompts"))
    generation = spec.generation if spec else _section(GenerationSpec, data.get("generation", {}))
    runtime = spec.runtime if spec else _section(RuntimeSpec, data.get("runtime", {}))
    sweep = spec.sweep if spec else _section(SweepSpec, data.get("sweep", {}))
    models = list(enumerate(spec.models)) if spec else _models(data.get("models"))
    problems = _storage_problems(data, spec, reach) + _size_of_sweep(len(models), sweep)
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
        problems += _model_problems(index, model, prompts, loaded, generation, runtime, sweep)
    if sweep and models and not any(model.loras for _, model in models):
        for field, unset in (("lora_scale", [1.0]), ("adapters", None)):
            if getattr(sweep, field) != unset:
                problems.append(Problem(f"sweep.{field}", "no model of the job has `loras`: "
                                        "give a model its adapters, or drop this axis"))
    return problems


def _size_of_sweep(models: int, sweep: SweepSpec | None) -> list[Problem]:
    """The number of runs is bounded: a few hundred values can otherwise multiply into 10^9."""
    if sweep is None:
        return []
    sizes = {"models": max(models, 1), **sweep.axes()}
    runs = math.prod(sizes.values())
    if runs <= MAX_RUNS:
        return []
    grid = " x ".join(f"{size} {name}" for name, size in sizes.items() if size > 1)
    return [Problem("sweep", f"the sweep is {grid} = {runs} runs, more than {MAX_RUNS}; split "
                    "it into several jobs or shorten the longest axes")]


def _storage_problems(data: dict[str, Any], spec: JobSpec | None,
                      reach: bool = True) -> list[Problem]:
    """The output's scheme is known, its library installed, and the storage options fit; with
    `reach`, the job's folder can be written there (`preflight`), and its name fits."""
    output = spec.output if spec else data.get("output")
    options = spec.storage_options if spec else data.get("storage_options")
    if not isinstance(output, str) or not isinstance(options, dict | None):
        return []
    reason = storage.check(output, options)
    if reason is not None:
        field = "storage_options" if options and "options" in reason else "output"
        return [Problem(field, reason, output if field == "output" else options)]
    name = spec.name if spec else None
    problems = [] if name is None else _name_problems(output, name)
    if reach and not problems:
        job_dir = storage.location(output) / name if name else storage.location(output)
        reason = preflight.output_problem(str(job_dir), options)
        if reason is not None:
            problems.append(Problem("output", reason, output))
    return problems


def _name_problems(output: str, name: str) -> list[Problem]:
    """A name too long for a folder name, or a job folder whose files' paths would be."""
    loc = storage.location(output)
    job_dir = loc.absolute() / name if storage.is_local(loc) else loc / name
    longest = f"{job_dir}/{'0' * 12}/images/.unreadable-{'0' * 48}.parquet.commit"
    if len(name.encode()) > MAX_NAME_BYTES:
        return [Problem("name", f"`name` is {len(name.encode())} bytes long; a folder name may "
                        f"have at most {MAX_NAME_BYTES}: shorten it", name)]
    limit = MAX_PATH_BYTES if storage.is_local(loc) else MAX_KEY_BYTES
    if len(longest.split("://", 1)[-1].encode()) > limit:
        return [Problem("name", f"the job's files under {job_dir} would have paths longer "
                        f"than the {limit} bytes {'a path' if storage.is_local(loc) else 'a key'}"
                        " may have: shorten `name` or `output`", name)]
    return []


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
                    runtime: RuntimeSpec | None, sweep: SweepSpec | None) -> list[Problem]:
    """What the model cannot do of what the job asks (the family's rules, through the one
    model-fit function serve files use too), and the job's own inputs for it: its prompt
    source, its classes, its adapters."""
    where = f"models.{index}"
    problems = fit_problems(where, model, runtime, _asked(prompts, generation, sweep))
    try:
        family = local_family(model)
    except ModelLoadError:
        return problems  # reported by fit_problems
    problems += _adapter_problems(where, model, sweep)
    if family is None:  # a hub id: only the hub can tell its family
        return problems
    if prompts:
        problem = family.conditioning.source_problem(prompts, f"{where} ({model.label})")
        if problem:
            problems.append(Problem(f"prompts.{prompts.kind}", problem))
        elif family.conditioning.name == "class" and loaded:
            problems += _class_problems(where, model, loaded, prompts.kind)
        elif family.conditioning.inputs:
            problems += _input_image_problems(where, model, loaded, generation,
                                              family.conditioning.inputs)
    return problems


def _asked(prompts: PromptSource | None, generation: GenerationSpec | None,
           sweep: SweepSpec | None) -> Asked:
    """What a job asks of each of its models, by the field that asks it."""
    if generation is None:
        return Asked(samplers=_samplers(sweep))
    negatives = bool(generation.negative_prompt or (prompts and prompts.columns.negative_prompt))
    return Asked(
        samplers=_samplers(sweep),
        sizes={f"generation.{side}": getattr(generation, side) for side in ("width", "height")
               if getattr(generation, side)},
        call_options={f"generation.{name}": name for name in generation.call_options()},
        negative_prompt="generation.negative_prompt" if negatives else None,
        arguments={"sweep.eta": "eta"} if sweep and any(sweep.eta) else {},
        edits={f"sweep.{name}": name for name in ("strength", "image_guidance_scale")
               if sweep and getattr(sweep, name)},
    )


def _samplers(sweep: SweepSpec | None) -> dict[str, str]:
    if sweep is None:
        return {}
    return {f"sweep.sampler.{i}.name": sampler.name for i, sampler in enumerate(sweep.sampler)}


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


def _input_image_problems(where: str, model: ModelSpec, prompts: list[Prompt],
                          generation: GenerationSpec | None, inputs: tuple[str, ...]
                          ) -> list[Problem]:
    """Input images that cannot be used, read from the files' headers (no pixels decoded):
    unreadable or truncated, declaring an absurd size, a mask of another size than its image,
    or (for a ControlNet that refuses to stretch) a control image of another size than the
    output."""
    from PIL import Image

    from darkroom.platform.data.records import MAX_INPUT_PIXELS

    wanted = (generation.width, generation.height) if generation and generation.width and \
        generation.height else None
    problems = []
    for prompt in prompts:
        sizes = {}
        for role, path in (("control", prompt.control_image), ("image", prompt.image),
                           ("mask", prompt.mask)):
            # control images: a bad one fails its rows within the error budget, as before;
            # here only their size, for a ControlNet that refuses to stretch them
            if path is None or (role == "control" and not (wanted and
                                                           model.control.resize == "refuse")):
                continue
            field = "prompts.control_images" if role == "control" else f"prompts ({role}s)"
            try:
                data = storage.read_bytes(storage.location(path))
                with Image.open(io.BytesIO(data)) as image:
                    sizes[role] = image.size
                    if image.width * image.height > MAX_INPUT_PIXELS:
                        raise ValueError(f"declares {image.width}x{image.height} pixels, more "
                                         f"than the {MAX_INPUT_PIXELS} an input may have")
                    image.verify()  # checks the file whole without keeping its pixels
            except Image.DecompressionBombError:
                problems.append(Problem(field, f"prompt {prompt.prompt_id}: {role} image {path} "
                                        f"declares more than the {MAX_INPUT_PIXELS} pixels an "
                                        "input may have"))
            except Exception as err:  # any unusable file: that prompt's problem
                problems.append(Problem(field, f"prompt {prompt.prompt_id}: {role} image "
                                        f"{path} cannot be used: {str(err)[:160]}"))
        if "mask" in sizes and "image" in sizes and sizes["mask"] != sizes["image"]:
            problems.append(Problem("prompts (masks)", f"prompt {prompt.prompt_id}: the mask is "
                                    f"{'x'.join(map(str, sizes['mask']))} and the image "
                                    f"{'x'.join(map(str, sizes['image']))}: give a mask of the "
                                    "image's size"))
        if ("control" in sizes and wanted and sizes["control"] != wanted
                and model.control.resize == "refuse"):
            problems.append(Problem("prompts.control_images", f"{prompt.prompt_id} is "
                                    f"{sizes['control'][0]}x{sizes['control'][1]}, the output "
                                    f"{wanted[0]}x{wanted[1]}, and {where} ({model.label}) "
                                    "has `control.resize: refuse`"))
        if len(problems) >= MAX_CLASS_PROBLEMS:
            break
    return problems[:MAX_CLASS_PROBLEMS]


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
        if is_class_id(text):
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
