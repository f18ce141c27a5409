"""MLflow logging: an experiment per job, a parent run per job invocation, a child per sweep point.

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

from darkroom.evals import registry
from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW
from darkroom.evals.outputs import first_value
from darkroom.evals.reporting.contact_sheets import contact_sheet_png
from darkroom.evals.reporting.naming import run_names, settings_of
from darkroom.evals.results import RunResult
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform.data import layout
from darkroom.platform.data.runinfo import RunInfo, read_run_info

KIND = "darkroom.kind"  # job | run | compare
KEY = "darkroom.key"
MISSING = "darkroom.missing."
PARENT = "mlflow.parentRunId"
# MLflow 3 asks what an experiment is for and shows GenAI views until told; these are model runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
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
    """Mark the run FINISHED, or FAILED when not `ok`."""
    mlflow_client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def to_json(value: Any) -> str:
    """`value` as indented sorted-key JSON with a final newline; non-JSON values as str()."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


# -- a job's evaluation in MLflow ------------------------------------------------------------


def log_job(results: list[RunResult], protocol: dict, job_dir: Path, tracking_spec: TrackingSpec,
            *, experiment: str, job_spec: dict, eval_spec: EvalSpec) -> None:
    """A parent run for this invocation (job folder + spec hash), a child run per result;
    requests bounded (`bounded_requests`)."""
    with bounded_requests():
        _log_job(results, protocol, job_dir, tracking_spec, experiment=experiment,
                 job_spec=job_spec, eval_spec=eval_spec)


def _log_job(results: list[RunResult], protocol: dict, job_dir: Path,
             tracking_spec: TrackingSpec, *, experiment: str, job_spec: dict,
             eval_spec: EvalSpec) -> None:
    mlflow_client = client(tracking_spec.uri)
    exp = experiment_id(mlflow_client, tracking_spec.experiment or experiment)
    digest = spec_hash(job_spec)
    stamped = {f"darkroom.version.{k}": v for k, v in versions().items()}
    key, name = path_key("job", job_dir, digest), f"{job_dir.name}-{digest[:8]}"
    tags = {KIND: "job", "darkroom.spec_hash": digest, "darkroom.output": job_dir, **stamped}
    names = run_names({d.name: read_run_info(d) for d in layout.run_dirs(job_dir)}
                      | {r.run_id: r.info for r in results})
    with run_scope(mlflow_client, exp, key, name, tags) as parent:
        log_params(mlflow_client, parent, {"job": job_dir.name, "runs": len(results)})
        for result in results:
            result.mlflow_run_id = _log_run(mlflow_client, exp, parent, result, protocol,
                                            job_spec, digest, stamped, eval_spec,
                                            names[result.run_id])
        log_files(mlflow_client, parent, {
            "job_spec.json": to_json(job_spec),
            "metrics.json": to_json([r.summary() for r in results]),
            "eval_protocol.json": to_json(protocol),
        })


def _log_run(mlflow_client, exp: str, parent: str, result: RunResult, protocol: dict,
             job_spec: dict, digest: str, stamped: dict, eval_spec: EvalSpec, name: str) -> str:
    info = result.info
    tags = {KIND: "run", PARENT: parent, "darkroom.run_id": result.run_id,
            "darkroom.spec_hash": digest, "darkroom.output": result.run_dir, **stamped,
            "darkroom.eval.feature_extractor": eval_spec.feature_extractor,
            "darkroom.eval.backend": eval_spec.backend}
    with run_scope(mlflow_client, exp, path_key("run", result.run_dir), name, tags) as run:
        changed = log_params(mlflow_client, run, run_params(info, result))
        if changed:
            result.warnings.append(f"params changed since this run was first logged (kept the "
                                   f"first values): {', '.join(changed)}")
        metrics = dict(result.metrics)
        if result.timing.get("images_per_s"):
            metrics["images_per_s"] = result.timing["images_per_s"]
        if result.timing.get("images"):
            metrics["seconds_per_image"] = result.timing["seconds"] / result.timing["images"]
        metrics["images"] = result.count
        metrics["rows_unreadable"] = len(result.unreadable)
        keys = [registry.metrics()[m].key for m in result.missing]
        stale = [key + end for key in keys for end in ("", CI_LOW, CI_HIGH) if "*" not in key]
        log_metrics(mlflow_client, run, metrics, result.missing, stale)
        mlflow_client.set_tag(run, "darkroom.warnings", "\n".join(result.warnings)[:5000] or "none")
        log_files(mlflow_client, run, {
            "contact_sheet.png": contact_sheet_png(result.run_dir, eval_spec.contact_sheet,
                                                   result.rows),
            "job_spec.json": to_json(job_spec),
            "run.json": to_json(info.dump()),
            "metrics.json": to_json({**result.summary(), "logged": metrics}),
            "eval_protocol.json": to_json(protocol),
        })
    return run


def run_params(info: RunInfo, result: RunResult) -> dict[str, Any]:
    """A run's MLflow params, from its run.json (the settings its name is made of, and more)."""
    return {
        **settings_of(info),
        "model.revision": info.model.revision or first_value(result.run_dir, "model_revision"),
        "images_per_prompt": info.images_per_prompt, "prompt_count": info.prompt_count,
        "image_count": result.count,
    }
