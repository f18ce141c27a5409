"""Where a number came from, as MLflow entities.

- Datasets (`log_inputs`): the prompt set a run was made from (its source, a digest of its
  prompts, their count) and each set of reference statistics its metrics were measured
  against (source, a digest of the images and the extractor's protocol, the protocol key).
  The same prompts give the same digest in every run, so MLflow shows one dataset used by all.
- Logged models: each model, or model with an adapter set, once per experiment (source,
  revision, family, each adapter's SHA-256), every run that used it linked as its input, and
  every run's finite metrics logged with the model's id, so the model carries its runs' scores.
  MLflow's `search_logged_models(order_by=[{"field_name": "metrics.fid"}])` ranks a model by
  its latest value: a job logs each model's runs worst first by the ranking metric (FID when
  there is one), so a model's latest value is its best run's and the ranking compares
  checkpoints at their best settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from darkroom.evals import registry
from darkroom.evals.metrics.compute import higher_is_better
from darkroom.evals.outputs import first_value
from darkroom.evals.reporting.views import RunRows
from darkroom.evals.results import RunResult

CONTEXT = "mlflow.data.context"
MODEL_KEY = "darkroom.key"
PROMPT_COLUMNS = ("prompt_id", "prompt", "negative_prompt", "class_label")
SPEED = "images_per_s"


def _digest(value: Any, length: int = 32) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()
                          ).hexdigest()[:length]


def prompt_source(job_spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the prompt set's name, its source) from the job's `prompts:` section."""
    prompts = dict(job_spec.get("prompts") or {})
    for key, label in (("file", None), ("list", "inline list"), ("classes", "classes"),
                       ("control_images", None), ("suite", None)):
        value = prompts.get(key)
        if value is not None:
            name = label or str(value).rstrip("/").rsplit("/", 1)[-1]
            return f"prompts {name}", {"type": key, key: value if key != "list" else len(value),
                                       "columns": prompts.get("columns")}
    return "prompts", {"type": "unknown"}


def prompt_dataset(rows: RunRows, job_spec: Mapping[str, Any]):
    """The run's prompt set: one row per prompt (id, text, negative, class), digested."""
    from mlflow.entities import Dataset

    table = rows.table
    present = [c for c in PROMPT_COLUMNS if c in table.column_names]
    prompts = sorted({tuple(str(v) for v in values) for values in zip(
        *(table.column(c).to_pylist() for c in present), strict=True)}) if rows.count else []
    name, source = prompt_source(job_spec)
    full = _digest(prompts, 64)
    return Dataset(name=name, digest=full[:32], source_type="darkroom.prompts",
                   source=json.dumps(source, sort_keys=True, default=str),
                   schema=json.dumps({"mlflow_colspec": [{"name": c, "type": "string"}
                                                         for c in present]}),
                   profile=json.dumps({"prompts": len(prompts), "images": rows.count,
                                       "sha256": full}))


def reference_datasets(protocol: Mapping[str, Any]) -> list:
    """A dataset per set of reference statistics the job's metrics were measured against."""
    from mlflow.entities import Dataset

    found = []
    for extractor, info in sorted((protocol.get("references") or {}).items()):
        key = _digest(info.get("protocol") or extractor, 16)
        content = info.get("fingerprint") or _digest([info.get("source"), info.get("count")])
        found.append(Dataset(
            name=f"reference {info.get('source')} ({extractor} features)",
            digest=_digest([content, key]), source_type="darkroom.reference",
            source=json.dumps({"source": info.get("source"), "cache": info.get("cache")}),
            profile=json.dumps({"images": info.get("count"), "fingerprint": content,
                                "protocol_key": key, "extractor": extractor})))
    return found


def log_datasets(client, run_id: str, prompts, references: Sequence) -> None:
    """The run's datasets as its inputs (MLflow keeps one of each name and digest)."""
    from mlflow.entities import DatasetInput, InputTag

    client.log_inputs(run_id, datasets=[
        DatasetInput(prompts, [InputTag(CONTEXT, "prompts")]),
        *(DatasetInput(r, [InputTag(CONTEXT, "reference")]) for r in references)])


# -- logged models ------------------------------------------------------------------------------


def model_identity(result: RunResult) -> dict[str, Any]:
    """What a run's model is: label, source, revision, family, and the adapters it had
    active, each with its SHA-256 (their scale is a run setting, not a model)."""
    info = result.info
    adapters = json.loads(first_value(result.run_dir, "adapters") or "[]")
    return {
        "label": info.label, "source": info.model.model,
        "revision": info.model.revision or first_value(result.run_dir, "model_revision"),
        "family": info.model.family or first_value(result.run_dir, "model_family"),
        "adapters": sorted(({"name": a["name"], "sha256": a.get("sha256")} for a in adapters),
                           key=lambda a: a["name"]),
    }


def model_name(identity: Mapping[str, Any]) -> str:
    """A logged model's name: the label, with its adapters (no `/ : . % " '`)."""
    names = "+".join(a["name"] for a in identity["adapters"])
    return re.sub(r"[/:.%\"']", "-", identity["label"] + (f"+{names}" if names else ""))


def logged_model(client, experiment: str, identity: Mapping[str, Any], parent: str) -> str:
    """The id of the experiment's logged model with this identity (made, READY, if new)."""
    key = _digest(["model", identity], 24)
    found = client.search_logged_models([experiment],
                                        filter_string=f"tags.`{MODEL_KEY}` = '{key}'",
                                        max_results=1)
    if found:
        return found[0].model_id
    params = {"source": identity["source"], "revision": str(identity["revision"]),
              "family": str(identity["family"]),
              "adapters": "+".join(a["name"] for a in identity["adapters"]) or "none",
              **{f"adapter.{a['name']}.sha256": str(a["sha256"]) for a in identity["adapters"]}}
    made = client.create_logged_model(experiment, name=model_name(identity),
                                      source_run_id=parent, params=params,
                                      tags={MODEL_KEY: key}, model_type="diffusion")
    client.finalize_logged_model(made.model_id, "READY")
    return made.model_id


def link_model(client, run_id: str, model_id: str) -> None:
    """The model as the run's input, once."""
    from mlflow.entities import LoggedModelInput

    inputs = client.get_run(run_id).inputs
    if model_id not in {m.model_id for m in (inputs.model_inputs or [])}:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id)])


def ranking_key(results: Sequence[RunResult]) -> str:
    """The metric runs are ranked by: the first quality metric some run has, else speed."""
    present = {k for r in results for k in r.metrics}
    for metric in registry.metrics().values():
        if "*" not in metric.key and metric.key in present:
            return metric.key
    return SPEED


def log_order(results: Sequence[RunResult], models: Mapping[str, str], key: str
              ) -> dict[str, int]:
    """run_id -> its place among its model's runs, worst first by `key` (runs without it
    first): the millisecond offset its model-linked metrics are logged at."""
    sign = 1.0 if higher_is_better(key) else -1.0
    places: dict[str, int] = {}
    for model in set(models.values()):
        mine = [r for r in results if models[r.run_id] == model]
        mine.sort(key=lambda r: (key in _finite(r), sign * _finite(r).get(key, 0.0)))
        places.update({r.run_id: i for i, r in enumerate(mine)})
    return places


def _finite(result: RunResult) -> dict[str, float]:
    values = {**result.metrics}
    if result.timing.get("images_per_s"):
        values[SPEED] = result.timing["images_per_s"]
    return {k: v for k, v in values.items() if isinstance(v, int | float) and v == v
            and abs(v) != float("inf")}
