"""Run names, one rule for MLflow and for `darkroom compare`: a run is logged under the name its
run.json gives it, and compare tells apart runs of several jobs that share a name with the same
rule, from the settings logged as the runs' params.

A name is model-sampler-steps-guidance. Among runs that would share one, every other setting a
sweep or a job can vary is added where its value differs between them (eta, sampler overrides,
the adapter set and scale, edit strength and image guidance, size, seed, call options, model
source, revision and load options); the id only where every one of them is the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from darkroom.platform.data.runinfo import RunInfo

Settings = Mapping[str, Any]  # keyed and valued as the run's MLflow params


def settings_of(info: RunInfo) -> dict[str, Any]:
    """The settings of a run that names are made of, as its MLflow params hold them. Settings
    only some runs have (adapters, edit settings, call options, model load options) are there
    only when the run has them, so other runs' params stay as they were."""
    settings: dict[str, Any] = {
        "model": info.model_label or info.model.model, "model.source": info.model.model,
        "model.revision": info.model.revision, "sampler": info.sampler.name,
        "sampler.overrides": json.dumps(info.sampler.overrides, indent=2, sort_keys=True,
                                        default=str),
        "steps": info.steps, "guidance_scale": info.guidance_scale, "eta": info.eta,
        "width": info.width, "height": info.height, "seed": info.seed,
    }
    if info.model.loras:
        names = ([lora.name for lora in info.model.loras] if info.adapters is None
                 else info.adapters)
        settings["adapters"] = "+".join(names) or "none"
        settings["lora_scale"] = info.lora_scale
    for name in ("strength", "image_guidance_scale"):
        if getattr(info, name) is not None:
            settings[name] = getattr(info, name)
    if info.call_options:
        settings["call_options"] = json.dumps(info.call_options, sort_keys=True)
    options = model_options(info)
    if options:
        settings["model.options"] = json.dumps(options, sort_keys=True, default=str)
    return settings


def model_options(info: RunInfo) -> dict[str, Any]:
    """The model's load options that differ from their defaults (dtype, variant, ControlNet,
    refiner, ...); its name, source, revision and adapters are settings of their own."""
    spec = info.model
    default = type(spec)(model=spec.model).model_dump(mode="json")
    return {name: value for name, value in spec.model_dump(mode="json").items()
            if name not in ("name", "model", "revision", "loras") and value != default[name]}


def base_name(settings: Settings) -> str:
    """A run's base name: model, sampler, steps and guidance."""
    return (f"{settings.get('model')}-{settings.get('sampler')}-s{settings.get('steps')}"
            f"-g{settings.get('guidance_scale')}")


def _pairs(key: str, empty: str) -> Callable[[Settings], str]:
    """A JSON object setting as `k=v,k=v` (`empty` when it has none)."""
    def shown(settings: Settings) -> str:
        text = settings.get(key) or "{}"
        try:
            pairs = sorted(json.loads(text).items())
        except (ValueError, AttributeError):  # not the JSON object Darkroom logs
            return str(text)
        return ",".join(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
                        for k, v in pairs) or empty
    return shown


# The other settings a sweep can vary, as they read in a name (only those that differ are shown).
NAME_PARTS: dict[str, Callable[[Settings], str]] = {
    "eta": lambda s: f"eta{s.get('eta')}",
    "sampler.overrides": _pairs("sampler.overrides", "default"),
    "adapters": lambda s: f"lora-{s.get('adapters') or 'none'}",
    "lora_scale": lambda s: f"scale{s.get('lora_scale')}",
    "strength": lambda s: f"strength{s.get('strength')}",
    "image_guidance_scale": lambda s: f"img-g{s.get('image_guidance_scale')}",
    "size": lambda s: f"{s.get('width')}x{s.get('height')}",
    "seed": lambda s: f"seed{s.get('seed')}",
    "call_options": _pairs("call_options", "no-call-options"),
    "model.source": lambda s: str(s.get("model.source")),
    "model.revision": lambda s: str(s.get("model.revision")),
    "model.options": _pairs("model.options", "default-options"),
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
