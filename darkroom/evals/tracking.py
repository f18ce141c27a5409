"""MLflow logging: an experiment per job, a parent run per job invocation, a child per sweep point.

Runs are found again by a `darkroom.key` tag (the output folder's path, and for a parent also the
job spec's hash), so evaluating the same output again updates its run instead of adding one.
Missing metrics are not logged as numbers: a `darkroom.missing.<metric>` tag holds the reason.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KIND = "darkroom.kind"  # job | run | compare
KEY = "darkroom.key"
MISSING = "darkroom.missing."
PARENT = "mlflow.parentRunId"
VERSIONED = ["darkroom", "torch", "diffusers", "transformers", "ray", "mlflow", "clean-fid",
             "torchmetrics", "nudenet"]


def client(uri: str | None = None):
    """An MlflowClient on `uri`, or on MLflow's default (MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_key(*parts: Any) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:24]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def artifact_root(uri: str) -> str | None:
    """For a SQLite store, its `mlruns/` folder beside the database file: MLflow's own default is
    ./mlruns in whatever folder the process happens to run in."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlruns").as_uri()


def experiment_id(mlflow_client, name: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return mlflow_client.create_experiment(
        name, artifact_location=artifact_root(mlflow_client.tracking_uri))


def open_run(mlflow_client, experiment: str, key: str, name: str, tags: Mapping[str, str]) -> str:
    """The run tagged with `key` in the experiment (reopened), or a new one."""
    found = mlflow_client.search_runs(
        [experiment], filter_string=f"tags.`{KEY}` = '{key}'", max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING", name=name)
    else:
        run_id = mlflow_client.create_run(experiment, run_name=name).info.run_id
    for tag, value in {**tags, KEY: key}.items():
        mlflow_client.set_tag(run_id, tag, str(value)[:5000])
    return run_id


def log_params(mlflow_client, run_id: str, params: Mapping[str, Any]) -> list[str]:
    """Log params; an existing param keeps its value (MLflow params are immutable): the changed
    ones are returned so the caller can warn."""
    from mlflow.entities import Param

    existing = mlflow_client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    changed = [k for k, v in params.items() if k in existing and existing[k] != str(v)[:6000]]
    if new:
        mlflow_client.log_batch(run_id, params=new)
    return changed


def log_metrics(mlflow_client, run_id: str, metrics: Mapping[str, float],
                missing: Mapping[str, str], missing_keys: Sequence[str] = ()) -> None:
    """Log the numbers; tag each missing metric with its reason and clear stale missing tags.

    A missing metric whose key an earlier evaluation logged gets NaN as its latest value, so the
    old number does not pass for the current one (MLflow cannot delete a metric).
    """
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    run = mlflow_client.get_run(run_id)
    stale = {k: math.nan for k in missing_keys if k in run.data.metrics}
    values = [Metric(k, float(v), now, 0) for k, v in {**stale, **metrics}.items()]
    if values:
        mlflow_client.log_batch(run_id, metrics=values)
    tags = run.data.tags
    for tag in tags:
        if tag.startswith(MISSING) and tag.removeprefix(MISSING) not in missing:
            mlflow_client.delete_tag(run_id, tag)
    for name, reason in missing.items():
        mlflow_client.set_tag(run_id, MISSING + name, reason[:5000])


def log_files(mlflow_client, run_id: str, files: Mapping[str, bytes | str]) -> None:
    """Write each named file to a temporary folder and log them all as the run's artifacts."""
    with tempfile.TemporaryDirectory(prefix="darkroom-artifacts-") as folder:
        for name, content in files.items():
            path = Path(folder) / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        mlflow_client.log_artifacts(run_id, folder)


def finish(mlflow_client, run_id: str, ok: bool = True) -> None:
    mlflow_client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
