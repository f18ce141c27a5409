"""Run names, one rule for MLflow and for `darkroom compare`: a run is logged under the name its
run.json gives it, and compare tells apart runs of several jobs that share a name with the same
rule, from the settings logged as the runs' params.

A name is model-sampler-steps-guidance. Among runs that would share one, every other setting a
sweep can vary is added where its value differs between them (eta, sampler overrides, size,
seed, model source and revision); the id where that still leaves two the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from darkroom.platform.data.runinfo import RunInfo

Settings = Mapping[str, Any]  # keyed and valued as the run's MLflow params


def settings_of(info: RunInfo) -> dict[str, Any]:
    """The settings of a run that names are made of, as its MLflow params hold them."""
    return {
        "model": info.model_label or info.model.model, "model.source": info.model.model,
        "model.revision": info.model.revision, "sampler": info.sampler.name,
        "sampler.overrides": json.dumps(info.sampler.overrides, indent=2, sort_keys=True,
                                        default=str),
        "steps": info.steps, "guidance_scale": info.guidance_scale, "eta": info.eta,
        "width": info.width, "height": info.height, "seed": info.seed,
    }


def base_name(settings: Settings) -> str:
    """A run's base name: model, sampler, steps and guidance."""
    return (f"{settings.get('model')}-{settings.get('sampler')}-s{settings.get('steps')}"
            f"-g{settings.get('guidance_scale')}")


def _overrides(settings: Settings) -> str:
    text = settings.get("sampler.overrides") or "{}"
    try:
        pairs = sorted(json.loads(text).items())
    except (ValueError, AttributeError):  # not the JSON object Darkroom logs
        return str(text)
    return ",".join(f"{k}={v}" for k, v in pairs) or "default"


# The other settings a sweep can vary, as they read in a name (only those that differ are shown).
NAME_PARTS: dict[str, Callable[[Settings], str]] = {
    "eta": lambda s: f"eta{s.get('eta')}",
    "sampler.overrides": _overrides,
    "size": lambda s: f"{s.get('width')}x{s.get('height')}",
    "seed": lambda s: f"seed{s.get('seed')}",
    "model.source": lambda s: str(s.get("model.source")),
    "model.revision": lambda s: str(s.get("model.revision")),
}


def distinct_names(settings: Mapping[str, Settings],
                   bases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Distinct names (id -> name) for runs with these settings: the base names (given, or
    made from the settings), then, among runs that still share a name, each NAME_PARTS setting
    whose value differs between them; the id's first 8 characters where that is not enough."""
    names = dict(bases) if bases is not None else {
        run: base_name(values) for run, values in settings.items()}
    for part in NAME_PARTS.values():
        groups: dict[str, list[str]] = {}
        for run, name in names.items():
            groups.setdefault(name, []).append(run)
        for members in groups.values():
            if len({part(settings[r]) for r in members}) > 1:
                for r in members:
                    names[r] = f"{names[r]}-{part(settings[r])}"
    counts = {n: list(names.values()).count(n) for n in names.values()}
    return {run: name if counts[name] == 1 else f"{name}-{run[:8]}"
            for run, name in names.items()}


def run_names(infos: Mapping[str, RunInfo]) -> dict[str, str]:
    """Distinct names for a job's runs (run_id -> name), from their run.json."""
    return distinct_names({run: settings_of(info) for run, info in infos.items()})
