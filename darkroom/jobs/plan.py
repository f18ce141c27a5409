"""The sweep grid -> runs, and runs x prompts -> request rows.

A run id is a short hash of the run's resolved settings, so the same settings always land in the
same folder and a rerun finds its earlier rows. Each row carries its own identity (`row_id`,
`prompt_id`, `sample_idx`) and a seed derived from the job seed and both ids, so nothing depends on
the order in which Ray processes rows, and the same prompt gets the same noise in every run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkroom.jobs.prompts import Prompt
from darkroom.jobs.spec import JobSpec
from darkroom.platform.data.runinfo import RunInfo, RunSampler
from darkroom.platform.engine.rows import request_schema
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SAMPLERS, SamplerSpec


@dataclass(frozen=True)
class Run:
    """One point of the sweep: one model with one sampler, step count, guidance and eta."""

    run_id: str
    model: ModelSpec
    sampler: SamplerSpec
    steps: int
    guidance_scale: float
    eta: float
    width: int | None
    height: int | None
    lora_scale: float = 1.0
    adapters: tuple[str, ...] | None = None  # None: all of the model's adapters
    strength: float | None = None  # image editing; None: the pipeline's default
    image_guidance_scale: float | None = None  # instruction editing


def _settings(spec: JobSpec, model: ModelSpec, sampler: SamplerSpec, steps: int,
              guidance: float, eta: float, lora: dict[str, Any],
              edit: dict[str, float]) -> dict[str, Any]:
    """Everything that decides a run's images (not its speed): hashed into the run id. Settings
    added later (adapters, micro-conditioning, edit settings) are left out while unset, so
    runs without them keep the ids they had."""
    return {
        **lora,
        **edit,
        "model": model.identity(),
        "sampler": sampler.model_dump(mode="json"),
        "steps": steps,
        "guidance_scale": guidance,
        "eta": eta,
        "width": spec.generation.width,
        "height": spec.generation.height,
        "negative_prompt": spec.generation.negative_prompt,
        "seed": spec.seed,
        # only when set, so runs without it keep the ids they had
        **({"call_options": spec.generation.call_options()}
           if spec.generation.call_options() else {}),
    }


def run_id_of(settings: dict[str, Any]) -> str:
    """A run id: 12 hex digits of the SHA-256 of the run's resolved settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def expand(spec: JobSpec) -> list[Run]:
    """Every combination of models x samplers x steps x guidance (x eta where a sampler uses it)."""
    runs: dict[str, Run] = {}
    sweep = spec.sweep
    for model, sampler, steps, guidance in itertools.product(
        spec.models, sweep.sampler, sweep.steps, sweep.guidance_scale
    ):
        # eta only changes samplers that take it; the others get one run at eta 0. Likewise
        # adapter scales and sets only exist for models with adapters.
        etas = sweep.eta if SAMPLERS[sampler.name].uses_eta else [0.0]
        scales = sweep.lora_scale if model.loras else [1.0]
        sets = sweep.adapters if model.loras and sweep.adapters else [None]
        strengths = sweep.strength or [None]
        image_guidance = sweep.image_guidance_scale or [None]
        for eta, scale, adapters, strength, image_scale in itertools.product(
                etas, scales, sets, strengths, image_guidance):
            names = None if adapters is None else tuple(adapters)
            edit = {k: v for k, v in (("strength", strength),
                                      ("image_guidance_scale", image_scale)) if v is not None}
            settings = _settings(spec, model, sampler, steps, guidance, eta,
                                 _lora_settings(model, scale, names), edit)
            run_id = run_id_of(settings)
            runs.setdefault(run_id, Run(run_id, model, sampler, steps, guidance, eta,
                                        spec.generation.width, spec.generation.height,
                                        scale, names, strength, image_scale))
    return list(runs.values())


def _lora_settings(model: ModelSpec, scale: float, names: tuple[str, ...] | None) -> dict:
    """A run's adapters for its id: which are active, the scale, and each local weights file's
    SHA-256 (a changed file is a new run); nothing for a model without adapters, so older run
    ids stay valid."""
    if not model.loras:
        return {}
    from darkroom.platform.data.records import file_sha256
    from darkroom.platform.models.adapters import weights_file

    hashes = {}
    for lora in model.loras:
        if names is None or lora.name in names:
            local = Path(lora.path).expanduser().exists()  # a hub id: its path and name say it
            hashes[lora.name] = file_sha256(weights_file(lora, True)) if local else None
    return {"lora_scale": scale, "adapters": sorted(hashes), "adapter_sha256": hashes}


def run_info(spec: JobSpec, run: Run, prompt_count: int) -> RunInfo:
    """What run.json holds: the run's resolved settings (read back for MLflow params)."""
    return RunInfo(
        run_id=run.run_id, job=spec.name, model=run.model, model_label=run.model.label,
        sampler=RunSampler(name=run.sampler.name, overrides=run.sampler.overrides),
        steps=run.steps, guidance_scale=run.guidance_scale, eta=run.eta, width=run.width,
        height=run.height, call_options=spec.generation.call_options(),
        lora_scale=run.lora_scale, adapters=None if run.adapters is None else list(run.adapters),
        seed=spec.seed, images_per_prompt=spec.prompts.images_per_prompt,
        prompt_count=prompt_count, strength=run.strength,
        image_guidance_scale=run.image_guidance_scale,
    )


def row_seed(job_seed: int, prompt_id: str, sample_idx: int) -> int:
    """A 32-bit seed from the job seed and the row's identity (stable across runs and machines)."""
    digest = hashlib.sha256(f"{job_seed}/{prompt_id}/{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def row_id_of(run_id: str, prompt_id: str, sample_idx: int) -> str:
    """A row id: `<run_id>/<prompt_id>/<sample_idx>`, unique within a job."""
    return f"{run_id}/{prompt_id}/{sample_idx}"


# The prompts of a job as a table: what prompt sources become (on the driver for small sources,
# on the workers for files) and what `expand_prompts` turns into request rows.
PROMPT_COLUMNS = ("prompt_id", "prompt", "negative_prompt", "class_label", "control_path",
                  "image_path", "mask_path")
# prompt column -> (the request row's field with its bytes, its role in `input_paths`)
INPUT_ROLES = {"control_path": ("control_image", "control"), "image_path": ("image", "image"),
               "mask_path": ("mask", "mask")}


def prompts_table(prompts: list[Prompt]) -> Any:
    """`Prompt`s as a table of PROMPT_COLUMNS (class labels as text; None: none given)."""
    import pyarrow as pa

    return pa.table({
        "prompt_id": pa.array([p.prompt_id for p in prompts], pa.string()),
        "prompt": pa.array([p.prompt for p in prompts], pa.string()),
        "negative_prompt": pa.array([p.negative_prompt for p in prompts], pa.string()),
        "class_label": pa.array([None if p.class_label is None else str(p.class_label)
                                 for p in prompts], pa.string()),
        "control_path": pa.array([p.control_image for p in prompts], pa.string()),
        "image_path": pa.array([p.image for p in prompts], pa.string()),
        "mask_path": pa.array([p.mask for p in prompts], pa.string()),
    })


def expansion(spec: JobSpec, runs: list[Run]) -> dict[str, Any]:
    """What the workers need to turn prompts into the request rows of `runs` (plain data)."""
    return {
        "job_id": spec.name,
        "seed": spec.seed,
        "images_per_prompt": spec.prompts.images_per_prompt,
        "negative_prompt": spec.generation.negative_prompt,
        "runs": [{
            "run_id": run.run_id,
            "sampler": run.sampler.name,
            "sampler_overrides": json.dumps(run.sampler.overrides, sort_keys=True),
            "steps": run.steps,
            "guidance_scale": run.guidance_scale,
            "eta": run.eta,
            "width": run.width,
            "height": run.height,
            "call_options": json.dumps(spec.generation.call_options(), sort_keys=True),
            "lora_scale": run.lora_scale,
            "adapters": None if run.adapters is None else list(run.adapters),
            "strength": run.strength,
            "image_guidance_scale": run.image_guidance_scale,
        } for run in runs],
    }


def expand_prompts(prompts: Any, plan: dict[str, Any]) -> Any:
    """A table of prompts (PROMPT_COLUMNS) -> the request rows of every run in `plan`
    (`expansion`), run by run, each prompt's samples together. Input images (control, source,
    mask) are read here, from their path or URI, so they travel with the rows to the actors."""
    import pyarrow as pa

    from darkroom.platform.data import storage

    columns = {name: prompts.column(name).to_pylist() if name in prompts.column_names
               else [None] * prompts.num_rows for name in PROMPT_COLUMNS}
    cache: dict[str, bytes] = {}
    inputs: dict[str, list[bytes | None]] = {}
    for column in INPUT_ROLES:
        inputs[column] = []
        for path in columns[column]:
            if path is not None and path not in cache:
                cache[path] = storage.read_bytes(storage.location(path))
            inputs[column].append(None if path is None else cache[path])
    samples = range(plan["images_per_prompt"])
    rows: dict[str, list] = {name: [] for name in request_schema().names}
    for run in plan["runs"]:
        for i, prompt_id in enumerate(columns["prompt_id"]):
            negative = columns["negative_prompt"][i]
            for sample_idx in samples:
                for key, value in run.items():
                    rows[key].append(value)
                rows["job_id"].append(plan["job_id"])
                rows["row_id"].append(row_id_of(run["run_id"], prompt_id, sample_idx))
                rows["prompt_id"].append(prompt_id)
                rows["sample_idx"].append(sample_idx)
                rows["seed"].append(row_seed(plan["seed"], prompt_id, sample_idx))
                rows["prompt"].append(columns["prompt"][i] or "")
                rows["negative_prompt"].append(plan["negative_prompt"] if negative is None
                                               else negative)
                rows["class_label"].append(columns["class_label"][i])
                for column, (field, _) in INPUT_ROLES.items():
                    rows[field].append(inputs[column][i])
                paths = {role: columns[column][i] for column, (_, role) in INPUT_ROLES.items()
                         if columns[column][i] is not None}
                rows["input_paths"].append(json.dumps(paths, sort_keys=True) if paths else None)
    return pa.table(rows, schema=request_schema())


def request_rows(spec: JobSpec, run: Run, prompts: list[Prompt],
                 skip: set[str] = frozenset()) -> list[dict[str, Any]]:
    """The request rows of one run as dicts, leaving out row ids in `skip` (a driver-side
    helper for small prompt lists; jobs expand prompts on the workers)."""
    rows = expand_prompts(prompts_table(prompts), expansion(spec, [run])).to_pylist()
    for row in rows:
        for field, _ in INPUT_ROLES.values():
            if row[field] is None:
                del row[field]
    return [row for row in rows if row["row_id"] not in skip]


def describe(spec: JobSpec, runs: list[Run], prompt_count: int) -> str:
    """The plan as a table: what `darkroom run --dry-run` prints."""
    per_run = prompt_count * spec.prompts.images_per_prompt
    edits = any(r.strength is not None or r.image_guidance_scale is not None for r in runs)
    lines = [
        f"job `{spec.name}`: {len(runs)} run(s) x {prompt_count} prompt(s) x "
        f"{spec.prompts.images_per_prompt} image(s) = {per_run * len(runs)} images",
        f"{'run':<14}{'model':<20}{'sampler':<22}{'steps':>6}{'guidance':>9}{'eta':>6}"
        + (f"{'strength':>9}{'img-g':>6}" if edits else "")
        + f"{'images':>8}{'denoiser calls':>16}",
    ]
    total_calls = 0
    for run in runs:
        # classifier-free guidance runs the denoiser on a doubled batch; an edit runs
        # int(steps x strength) of its steps
        steps = int(run.steps * run.strength) if run.strength is not None else run.steps
        calls = per_run * steps * (2 if run.guidance_scale > 1 else 1)
        total_calls += calls
        edit = (f"{_shown(run.strength):>9}{_shown(run.image_guidance_scale):>6}"
                if edits else "")
        lines.append(
            f"{run.run_id:<14}{run.model.label[:19]:<20}{run.sampler.name[:21]:<22}"
            f"{run.steps:>6}{run.guidance_scale:>9g}{run.eta:>6g}{edit}{per_run:>8}{calls:>16}"
        )
    lines.append(f"estimated work: {total_calls} denoiser evaluations (image x step, x2 with "
                 f"guidance > 1), {len(spec.models)} model load(s)")
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
