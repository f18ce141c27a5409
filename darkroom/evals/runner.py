"""Evaluate a job's output folder: per-image pass on actors, corpus math on the driver, MLflow.

`evaluate_job` is what a job's `eval:` section and `darkroom eval` both call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals import tracking as track
from darkroom.evals.extractors import check_extractor, extractor_protocol
from darkroom.evals.metrics import METRICS, Context, Unavailable
from darkroom.evals.reference import reference_stats
from darkroom.evals.results import (
    PendingResults,
    RunResult,
    count_rows,
    read_timing,
    run_scores,
    write_scores,
    write_unreadable,
)
from darkroom.evals.scoring import ScorePlan, images_dataset, score_dataset, table_dataset
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform import layout, storage
from darkroom.platform.errors import UserError
from darkroom.platform.storage import Location

log = logging.getLogger("darkroom.evals")
DISTANCES = ("fid", "kid")


def evaluate_job(job_dir: str | Location, eval_spec: EvalSpec, tracking: TrackingSpec, *,
                 experiment: str, job_spec: dict, run_ids: list[str] | None = None) -> list[dict]:
    """Evaluate the runs of a job folder and log them to MLflow.

    Returns one dict per run: run_id, mlflow_run_id, images, metrics {name: value}, missing
    {metric: reason}, warnings. A metric that cannot be computed (no weights, no reference, no
    prompts) is missing with its reason; the others are still computed and logged.
    """
    job_dir = storage.location(job_dir)  # a local folder or a URI
    job_dir = job_dir.resolve() if isinstance(job_dir, Path) else job_dir
    eval_spec = EvalSpec.model_validate(eval_spec)
    tracking = TrackingSpec.model_validate(tracking or {})
    runs = select_runs(job_dir, run_ids)
    track.check_reachable(tracking.uri)  # before the expensive part
    # Metrics are kept on disk until MLflow has them: if logging fails, the next evaluation of
    # the same images with the same settings logs them without computing them again.
    pending = PendingResults(job_dir, runs, eval_spec)
    saved = pending.load()
    if saved is None:
        results, protocol = evaluate_runs(runs, eval_spec)
        pending.save(results, protocol)
    else:
        results, protocol = saved
        log.warning("logging the metrics an earlier evaluation computed (%s)", pending.path)
    track.log_job(results, protocol, job_dir, tracking, experiment=experiment,
                  job_spec=job_spec, eval_spec=eval_spec)
    storage.delete(pending.path)
    return [r.summary() for r in results]


def select_runs(job_dir: Location, run_ids: list[str] | None) -> list[Location]:
    """The run folders to evaluate: all of the job's, or the named ones (unknown ids refused)."""
    runs = layout.run_dirs(job_dir)
    if run_ids is not None:
        by_id = {r.name: r for r in runs}
        unknown = [r for r in run_ids if r not in by_id]
        if unknown:
            raise UserError(f"run(s) {', '.join(unknown)} not in {job_dir}; it holds "
                            f"{', '.join(by_id) or 'no runs'}")
        runs = [by_id[r] for r in run_ids]
    if not runs:
        raise UserError(f"no runs to evaluate in {job_dir}: expected <run_id>/{layout.RUN_INFO} "
                        "folders, as `darkroom run` writes them")
    return runs


def _ensure_ray() -> None:
    from darkroom.platform.cluster import connect_ray

    connect_ray(log_to_driver=False)


def evaluate_runs(run_dirs: list[Location], spec: EvalSpec) -> tuple[list[RunResult], dict]:
    """1. plan the per-image parts; 2. reference statistics; 3. the pass over all runs' images
    on actors; 4. per run: scores Parquet and corpus metrics."""
    results = [RunResult(d.name, d, layout.read_json(d / layout.RUN_INFO), read_timing(d))
               for d in run_dirs]
    shared = Context(spec)  # the reference, and warnings about it
    plan, skipped = _plan(spec)

    # 2. reference statistics (cached on disk), extracted on the same kind of actor pool
    protocol: dict[str, Any] = {}
    if plan.features:
        _ensure_ray()
        try:
            ref = reference_stats(spec.reference, plan.features, plan.weights,
                                  lambda table: _features_of(table, plan, spec))
            shared.reference, protocol["reference"] = ref.stats, ref.info
            shared.warnings.extend(ref.warnings)
        except (UserError, RuntimeError) as err:
            reason = f"reference statistics: {err}"
            plan = plan.model_copy(update={"features": None})
            skipped.update({m: reason for m in DISTANCES if m in spec.metrics})

    # 3. one pass over every run's images; unreadable files and images are left out, with reasons
    files, groups = [], []
    for result in results:
        for f in layout.parquet_files(result.run_dir / layout.IMAGES):
            files.append(str(f))
            groups.append(result.run_id)
    columns: dict[str, np.ndarray] = {}
    bad_files: list[tuple[str, str]] = []
    if files and plan.parts():
        _ensure_ray()
        columns = score_dataset(images_dataset(files, groups, bad_files), plan, spec.actors,
                                spec.batch_size, spec.gpus_per_actor)

    # 4. per run
    for result in results:
        scores, result.unreadable = run_scores(result.run_id, columns)
        result.count = scores.count if columns else count_rows(result.run_dir)
        if columns:
            write_scores(result.run_dir, scores)
            write_unreadable(result.run_dir, result.unreadable)
        ctx = Context(spec, shared.reference, warnings=list(shared.warnings))
        ctx.warnings += _unreadable_warnings(result, bad_files)
        for name in spec.metrics:
            metric = METRICS[name]
            reason = skipped.get(name) or scores.part_errors.get(metric.part)
            if reason is None and result.count == 0:
                reason = "the run has no images"
            if reason:
                result.missing[name] = reason
                continue
            try:
                result.metrics.update(metric.compute(scores, ctx))
            except Unavailable as err:
                result.missing[name] = str(err)
        result.warnings = list(ctx.warnings)
        for name, reason in result.missing.items():
            log.warning("%s: %s missing: %s", result.run_id, name, reason)
    protocol.update(_protocol(spec, plan))
    return results, protocol


def _unreadable_warnings(result: RunResult, bad_files: list[tuple[str, str]]) -> list[str]:
    warnings = [f"file {path} is unreadable ({reason}); it was left out: `darkroom run` the job "
                "again to move it aside and generate its rows again"
                for path, reason in bad_files
                if storage.location(path).parent.parent == result.run_dir]
    if result.unreadable:
        first = next(iter(result.unreadable.items()))
        warnings.append(f"{len(result.unreadable)} image(s) could not be read and were left out "
                        f"of every metric (e.g. {first[0]}: {first[1]}); see "
                        f"{layout.SCORES}/unreadable.parquet")
    return warnings


def _plan(spec: EvalSpec) -> tuple[ScorePlan, dict[str, str]]:
    """Which per-image parts to run, and the metrics already known to be missing (and why)."""
    wanted = {METRICS[m].part for m in spec.metrics}
    skipped: dict[str, str] = {}
    features = spec.feature_extractor if "features" in wanted else None
    # one CLIP configured for clip_score serves CLIP-FID too, unless weights say otherwise
    weights = spec.clip_model if features == "clip" and not spec.weights else spec.weights
    if features:
        reason = check_extractor(features, weights)
        if reason is None and spec.reference is None:
            reason = "no reference images: set eval.reference (or --reference)"
        if reason:
            skipped = {m: reason for m in DISTANCES if m in spec.metrics}
            features = None
    plan = ScorePlan(
        features=features, weights=weights,
        clip_model=spec.clip_model if "clip" in wanted else None,
        safety=spec.safety if "safety" in wanted else None,
        classifier=spec.classifier if "classifier" in wanted else None,
        device="cuda" if spec.gpus_per_actor > 0 else "cpu",
    )
    return plan, skipped


def _features_of(table: pa.Table, plan: ScorePlan, spec: EvalSpec) -> np.ndarray:
    only = ScorePlan(features=plan.features, weights=plan.weights, device=plan.device)
    columns = score_dataset(table_dataset(table, "reference"), only, spec.actors, spec.batch_size,
                            spec.gpus_per_actor)
    if "error_features" in columns:
        raise RuntimeError(columns["error_features"][0])
    order = np.argsort(columns["row_id"].astype(np.int64))
    return columns["features"][order]


def _protocol(spec: EvalSpec, plan: ScorePlan) -> dict[str, Any]:
    protocol: dict[str, Any] = {
        "metrics": {m: {"key": METRICS[m].key, "higher_is_better": METRICS[m].higher_is_better,
                        "description": METRICS[m].description} for m in spec.metrics},
        "feature_extractor": spec.feature_extractor, "backend": spec.backend,
        "kid": {"subsets": spec.kid_subsets, "subset_size": spec.kid_subset_size, "seed": 0},
        "clip_model": spec.clip_model, "clip_max_tokens": plan.max_prompt_tokens,
        "safety": spec.safety.model_dump(), "classifier": spec.classifier,
        "versions": track.versions(),
    }
    if plan.features:
        protocol["extractor_protocol"] = extractor_protocol(plan.features, plan.weights)
    return protocol


