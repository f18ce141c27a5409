"""A job's evaluation in MLflow: a parent run per job invocation, a child per sweep point.

Each run gets its params, metrics (linked to its logged model and prompt set), datasets,
intervals beside the values, the image grid and per-image table (`views`), its contact sheet
and records; the parent gets the ranked table. Runs are found again by their `darkroom.key`
tag (`tracking.run_scope`), so evaluating the same output again updates them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkroom.evals import registry
from darkroom.evals.categories import prompt_categories
from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW
from darkroom.evals.outputs import first_value
from darkroom.evals.reporting import lineage, summary, views
from darkroom.evals.reporting.contact_sheets import contact_sheet_png
from darkroom.evals.reporting.naming import run_names, settings_of
from darkroom.evals.reporting.tracking import (
    KIND,
    PARENT,
    bounded_requests,
    client,
    experiment_id,
    log_files,
    log_metrics,
    log_params,
    mark_tables,
    path_key,
    run_scope,
    spec_hash,
    table_json,
    to_json,
    versions,
    write_files,
)
from darkroom.evals.results import RunResult
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform import console
from darkroom.platform.data import layout
from darkroom.platform.data.runinfo import RunInfo, read_run_info


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
    rows = {r.run_id: views.read_run_rows(r.run_dir, r.rows) for r in results}
    job = JobLog(exp, digest, stamped, eval_spec, tracking_spec, job_spec, protocol,
                 grid_prompts(rows, job_spec, tracking_spec.grid_prompts),
                 lineage.reference_datasets(protocol), int(time.time() * 1000))
    with run_scope(mlflow_client, exp, key, name, tags) as parent, \
            console.current().phase("logging to MLflow", len(results), "runs") as progress:
        log_params(mlflow_client, parent, {"job": job_dir.name, "runs": len(results)})
        models = {r.run_id: lineage.logged_model(mlflow_client, exp, lineage.model_identity(r),
                                                 parent) for r in results}
        order = lineage.log_order(results, models, lineage.ranking_key(results))
        for result in results:
            result.mlflow_run_id = _log_run(mlflow_client, job, parent, result,
                                            names[result.run_id], rows[result.run_id],
                                            models[result.run_id], order[result.run_id])
            progress.advance()
        ranked_by = lineage.ranking_key(results)
        ranked = summary.ranking({r.run_id: names[r.run_id] for r in results},
                                 {r.run_id: logged_metrics(r) for r in results}, ranked_by)
        log_files(mlflow_client, parent, {
            "job_spec.json": to_json(job_spec),
            "metrics.json": to_json([r.summary() for r in results]),
            "eval_protocol.json": to_json(protocol),
            RANKING: table_json(ranked),
        })
        mark_tables(mlflow_client, parent, [RANKING])
        mlflow_client.set_tag(parent, summary.NOTE, summary.ranking_note(ranked, ranked_by))


RANKING = "ranking.json"


@dataclass
class JobLog:
    """What every run of one job's evaluation is logged with."""

    experiment: str
    spec_hash: str
    stamped: dict[str, str]
    eval_spec: EvalSpec
    tracking: TrackingSpec
    job_spec: dict
    protocol: dict
    grid: list[str]  # the prompts of MLflow's image grid, the same for every run
    references: list  # the reference statistics, as MLflow datasets
    started_ms: int


def grid_prompts(rows: dict[str, views.RunRows], job_spec: dict, count: int) -> list[str]:
    """The image grid's prompts, spread over the runs' classes (or the prompt file's
    categories): the same for every run of the job."""
    categories, _ = prompt_categories(job_spec)
    found: dict[str, str | None] = {}
    for run in rows.values():
        table = run.table
        if not run.count:
            continue
        labels = (table.column("class_label").to_pylist() if "class_label" in table.column_names
                  else [None] * run.count)
        for prompt_id, label in zip(table.column("prompt_id").to_pylist(), labels, strict=True):
            category = label if label is not None else (categories or {}).get(prompt_id)
            found.setdefault(str(prompt_id), None if category is None else str(category))
    return views.spread_prompts(found, count)


def logged_metrics(result: RunResult) -> dict[str, float]:
    """What a run logs as metrics: its metrics, speed, image and unreadable counts."""
    metrics = dict(result.metrics)
    if result.timing.get("images_per_s"):
        metrics["images_per_s"] = result.timing["images_per_s"]
    if result.timing.get("images"):
        metrics["seconds_per_image"] = result.timing["seconds"] / result.timing["images"]
    metrics["images"] = result.count
    metrics["rows_unreadable"] = len(result.unreadable)
    return metrics


def _log_run(mlflow_client, job: JobLog, parent: str, result: RunResult, name: str,
             rows: views.RunRows, model_id: str, place: int) -> str:
    info, spec = result.info, job.tracking
    tags = {KIND: "run", PARENT: parent, "darkroom.run_id": result.run_id,
            "darkroom.spec_hash": job.spec_hash, "darkroom.output": result.run_dir,
            **job.stamped, "darkroom.eval.feature_extractor": job.eval_spec.feature_extractor,
            "darkroom.eval.backend": job.eval_spec.backend}
    with run_scope(mlflow_client, job.experiment, path_key("run", result.run_dir), name,
                   tags) as run:
        changed = log_params(mlflow_client, run, run_params(info, result))
        if changed:
            result.warnings.append(f"params changed since this run was first logged (kept the "
                                   f"first values): {', '.join(changed)}")
        prompts = lineage.prompt_dataset(rows, job.job_spec)
        lineage.log_datasets(mlflow_client, run, prompts, job.references)
        lineage.link_model(mlflow_client, run, model_id)
        metrics = logged_metrics(result)
        keys = [registry.metrics()[m].key for m in result.missing]
        stale = [key + end for key in keys for end in ("", CI_LOW, CI_HIGH) if "*" not in key]
        log_metrics(mlflow_client, run, metrics, result.missing, stale, model_id=model_id,
                    timestamp=job.started_ms + place, dataset=(prompts.name, prompts.digest))
        existing = mlflow_client.get_run(run).data.tags
        with tempfile.TemporaryDirectory(prefix="darkroom-artifacts-") as folder:
            write_files(Path(folder), {
                "contact_sheet.png": contact_sheet_png(result.run_dir,
                                                       job.eval_spec.contact_sheet, result.rows),
                "job_spec.json": to_json(job.job_spec),
                "run.json": to_json(info.dump()),
                "metrics.json": to_json({**result.summary(), "logged": metrics}),
                "eval_protocol.json": to_json(job.protocol),
            })
            shown = views.write_views(Path(folder), result.run_dir, rows, job.grid,
                                      spec.grid_samples, spec.table_rows,
                                      existing.get(views.GRID_DIGEST))
            mlflow_client.log_artifacts(run, folder)
        tables = json.loads(shown.pop(views.LOGGED_ARTIFACTS, "[]"))
        mark_tables(mlflow_client, run, [t["path"] for t in tables])
        stale_intervals = [t for t in existing if t.startswith(summary.INTERVAL)]
        intervals = summary.interval_tags(metrics)
        for tag in stale_intervals:
            if tag not in intervals:
                mlflow_client.delete_tag(run, tag)
        note = summary.run_note(name, metrics, result.missing, result.warnings)
        from mlflow.entities import RunTag

        mlflow_client.log_batch(run, tags=[RunTag(k, str(v)[:5000]) for k, v in {
            **shown, **intervals, "darkroom.warnings": "\n".join(result.warnings) or "none",
            summary.NOTE: note}.items()])
    return run


def run_params(info: RunInfo, result: RunResult) -> dict[str, Any]:
    """A run's MLflow params, from its run.json (the settings its name is made of, and more)."""
    return {
        **settings_of(info),
        "model.revision": info.model.revision or first_value(result.run_dir, "model_revision"),
        "images_per_prompt": info.images_per_prompt, "prompt_count": info.prompt_count,
        "image_count": result.count,
    }
