"""MLflow logging: an experiment per job, a parent run per job invocation, a child per sweep point
(the job's runs are logged by `job_log`; these are the store's helpers).

Runs are found again by a `darkroom.key` tag (the output folder's path, and for a parent also the
job spec's hash), so evaluating the same output again updates its run instead of adding one.
Missing metrics are not logged as numbers: a `darkroom.missing.<metric>` tag holds the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KIND = "darkroom.kind"  # job | run | compare
KEY = "darkroom.key"
MISSING = "darkroom.missing."
PARENT = "mlflow.parentRunId"
# MLflow 3 asks what an experiment is for and shows GenAI views until told; these are model runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI takes the kind from its "workflow type" (GenAI unless a link or the
# sidebar's switch says otherwise, kept in the browser), not from the tag: links that open an
# experiment on its runs say so.
WORKFLOW = "workflowType=machine_learning"
VERSIONED = ["darkroom", "torch", "diffusers", "transformers", "ray", "mlflow", "clean-fid",
             "torchmetrics", "nudenet"]


def client(uri: str | None = None):
    """An MlflowClient on `uri`, or on MLflow's default (MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# MLflow's own default retries a refused request 7 times with exponential backoff, about four
# minutes before it gives up; a store that went away should fail the command in seconds. These
# apply where the environment does not set MLflow's variables itself.
RETRIES, TIMEOUT_S = 2, 30
RETRIES_ENV, TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"


@contextmanager
def bounded_requests(retries: int = RETRIES, timeout_s: int = TIMEOUT_S,
                     force: bool = False) -> Iterator[None]:
    """MLflow HTTP requests in the body retry `retries` times and wait at most `timeout_s` for
    an answer (unless the environment says otherwise and not `force`)."""
    wanted = {RETRIES_ENV: str(retries), TIMEOUT_ENV: str(timeout_s)}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update({k: v for k, v in wanted.items() if force or saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TrackingFailed(RuntimeError):
    """The tracking store stopped answering while results were logged (exit code 1)."""


def check_reachable(uri: str | None) -> str:
    """Fail fast, before hours of scoring, when the tracking store cannot be reached: one quick
    request with no retries (MLflow's default retries take minutes). Returns the store's URI."""
    from darkroom.platform.errors import UserError

    mlflow_client = client(uri)
    try:
        with bounded_requests(0, 10, force=True):
            mlflow_client.search_experiments(max_results=1)
    except Exception as err:  # any failure means the same fix
        raise UserError(
            f"cannot reach the MLflow tracking store {mlflow_client.tracking_uri} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); start it, or give "
            "another with --tracking-uri / `tracking.uri`"
        ) from err
    return mlflow_client.tracking_uri


def spec_hash(spec: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of the spec as sorted-key JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_key(*parts: Any) -> str:
    """A `darkroom.key` value: the first 24 hex digits of the SHA-256 of the parts, joined."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:24]


def versions() -> dict[str, str]:
    """The installed versions of the VERSIONED packages; those not installed are left out."""
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
    """The named experiment's id: restored if deleted, created (see `artifact_root`) if absent."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND[0] not in found.tags:
            mlflow_client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id
    return mlflow_client.create_experiment(
        name, artifact_location=artifact_root(mlflow_client.tracking_uri),
        tags=dict([EXPERIMENT_KIND]))


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


@contextmanager
def run_scope(mlflow_client, experiment: str, key: str, name: str,
              tags: Mapping[str, Any]) -> Iterator[str]:
    """An MLflow run found by `key` (or new) for the body: FINISHED after it, FAILED on error."""
    run_id = open_run(mlflow_client, experiment, key, name, tags)
    ok = False
    try:
        yield run_id
        ok = True
    finally:
        finish(mlflow_client, run_id, ok)


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
                missing: Mapping[str, str], missing_keys: Sequence[str] = (), *,
                model_id: str | None = None, timestamp: int | None = None,
                dataset: tuple[str, str] | None = None) -> None:
    """Log the numbers; tag each missing metric with its reason and clear stale missing tags.

    A missing metric whose key an earlier evaluation logged gets NaN as its latest value, so the
    old number does not pass for the current one (MLflow cannot delete a metric). With
    `model_id` the finite values are also the logged model's (with `dataset`, the name and
    digest of the prompt set they were measured on); a NaN never is (MLflow would store 0).
    """
    import math
    import time

    from mlflow.entities import Metric

    now = timestamp or int(time.time() * 1000)
    run = mlflow_client.get_run(run_id)
    stale = {k: math.nan for k in missing_keys if k in run.data.metrics}
    name, digest = dataset or (None, None)

    def metric(key: str, value: float) -> Metric:
        if model_id is None or not math.isfinite(value):
            return Metric(key, value, now, 0)
        return Metric(key, value, now, 0, model_id=model_id, dataset_name=name,
                      dataset_digest=digest, run_id=run_id)

    values = [metric(k, float(v)) for k, v in {**stale, **metrics}.items()]
    if values:
        mlflow_client.log_batch(run_id, metrics=values)
    tags = run.data.tags
    for tag in tags:
        if tag.startswith(MISSING) and tag.removeprefix(MISSING) not in missing:
            mlflow_client.delete_tag(run_id, tag)
    for name, reason in missing.items():
        mlflow_client.set_tag(run_id, MISSING + name, reason[:5000])


def write_files(folder: Path, files: Mapping[str, bytes | str]) -> None:
    """Each named file (a relative path) under `folder`."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def log_files(mlflow_client, run_id: str, files: Mapping[str, bytes | str]) -> None:
    """Write each named file to a temporary folder and log them all as the run's artifacts."""
    with tempfile.TemporaryDirectory(prefix="darkroom-artifacts-") as folder:
        write_files(Path(folder), files)
        mlflow_client.log_artifacts(run_id, folder)


LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"


def table_json(records: Sequence[Mapping[str, Any]]) -> str:
    """Records in MLflow's table format (pandas' `split` orientation, as `log_table` writes)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    return json.dumps({"columns": columns, "data": [[r.get(c) for c in columns]
                                                    for r in records]}, default=str)


def mark_tables(mlflow_client, run_id: str, paths: Sequence[str]) -> None:
    """List the artifacts at `paths` as tables for MLflow's UI (`mlflow.loggedArtifacts`), as
    `log_table` does, keeping those already listed."""
    tags = mlflow_client.get_run(run_id).data.tags
    listed = json.loads(tags.get(LOGGED_ARTIFACTS, "[]"))
    wanted = listed + [{"path": p, "type": "table"} for p in paths
                       if {"path": p, "type": "table"} not in listed]
    if wanted != listed:
        mlflow_client.set_tag(run_id, LOGGED_ARTIFACTS, json.dumps(wanted))


def log_table(mlflow_client, run_id: str, path: str, records: Sequence[Mapping[str, Any]]
              ) -> None:
    """A table (no images) the UI can sort and filter, replaced on every call (`log_table`
    appends to an existing one: evaluating again would double it)."""
    log_files(mlflow_client, run_id, {path: table_json(records)})
    mark_tables(mlflow_client, run_id, [path])


def finish(mlflow_client, run_id: str, ok: bool = True) -> None:
    """Mark the run FINISHED, or FAILED when not `ok`."""
    mlflow_client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def to_json(value: Any) -> str:
    """`value` as indented sorted-key JSON with a final newline; non-JSON values as str()."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
