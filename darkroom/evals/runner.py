"""Evaluate a job's output folder: per-image pass on actors, corpus math on the driver, MLflow.

`evaluate_job` is what a job's `eval:` section and `darkroom eval` both call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals import registry
from darkroom.evals.categories import Annotations, attach_annotations, prompt_annotations
from darkroom.evals.feature_cache import align, read_features, write_features
from darkroom.evals.metrics.base import Context, RunScores, feature_column
from darkroom.evals.metrics.compute import statistics, with_intervals
from darkroom.evals.outputs import SpecRows, image_hashes, read_rows, read_timing, spec_rows
from darkroom.evals.reference import reference_stats
from darkroom.evals.reporting import tracking as track
from darkroom.evals.reporting.job_log import log_job
from darkroom.evals.results import (
    PendingResults,
    RunResult,
    left_out,
    run_scores,
    write_record,
    write_scores,
    write_unreadable,
)
from darkroom.evals.score_cache import StoredScores
from darkroom.evals.scorers.actor import images_dataset, score_dataset, table_dataset
from darkroom.evals.scorers.features import extractor_protocol
from darkroom.evals.scorers.plan import ScorePlan, metrics_needing, plan_parts, setting_values
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.evals.units import FEATURES, Part, error_column
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import read_run_info
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError

log = logging.getLogger("darkroom.evals")


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
        results, protocol = evaluate_runs(runs, eval_spec, prompt_annotations(job_spec),
                                          job_spec)
        pending.save(results, protocol)
    else:
        results, protocol = saved
        for result in results:
            result.rows = spec_rows(result.run_dir, result.info, job_spec)[0]
        log.warning("logging the metrics an earlier evaluation computed (%s)", pending.path)
    try:
        log_job(results, protocol, job_dir, tracking, experiment=experiment,
                job_spec=job_spec, eval_spec=eval_spec)
    except Exception as err:  # the store went away (or refused) after the check
        first = (str(err).splitlines() or [""])[0][:300]
        raise track.TrackingFailed(
            f"MLflow ({tracking.uri or 'the default store'}) failed while the metrics were "
            f"logged ({type(err).__name__}: {first}); they are kept in {pending.path}: "
            f"`darkroom eval {job_dir}` again once it answers logs them without computing "
            "them again") from err
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


def evaluate_runs(run_dirs: list[Location], spec: EvalSpec,
                  annotations: Annotations | None = None,
                  job_spec: dict | None = None) -> tuple[list[RunResult], dict]:
    """1. plan the per-image parts; 2. reference statistics per feature extractor; 3. the passes
    over the runs' images on actors (features already cached for a run are not extracted
    again); 4. per run: scores, features, metrics with bootstrap intervals, the eval record.

    `annotations`: the prompts' categories (per-category FID, strata), skills (per-skill
    results) and the metadata the judged parts read (a suite's questions); `job_spec`
    (job.yaml) with each run.json says which of a run's rows its spec asks for.
    """
    annotations = annotations or Annotations(reason="no prompt annotations were given")
    results = [RunResult(d.name, d, read_run_info(d), read_timing(d)) for d in run_dirs]
    row_notes: dict[str, list[str]] = {}
    for result in results:
        result.rows, row_notes[result.run_id] = spec_rows(result.run_dir, result.info, job_spec)
    shared = Context(spec)  # the references, and warnings about them
    plan, skipped = plan_parts(spec)

    # 2. reference statistics (cached on disk), extracted on the same kind of actor pool
    protocols: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, Any]] = {}
    for extractor, weights in plan.features().items():
        _ensure_ray()
        try:
            protocols[extractor] = extractor_protocol(extractor, weights)
            ref = reference_stats(spec.reference, extractor, weights,
                                  lambda table, e=extractor, w=weights, d=plan.device:
                                  _features_of(table, e, w, d, spec))
        except (UserError, RuntimeError) as err:
            reason = f"reference statistics ({extractor} features): {err}"
            part = Part(FEATURES, extractor)
            plan = plan.only([p for p in plan.keys() if p != part])
            skipped.update({m: reason for m in metrics_needing(spec, part)})
            continue
        shared.references[extractor], references[extractor] = ref.stats, ref.info
        shared.warnings.extend(ref.warnings)

    # 3. the passes: runs grouped by the parts they still need
    cached: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    stored = {result.run_id: StoredScores(result, plan, annotations.metadata)
              for result in results}
    needs: dict[tuple[Part, ...], list[RunResult]] = {}
    for result in results:
        need = _needed(result, plan, protocols, cached.setdefault(result.run_id, {}),
                       stored[result.run_id])
        needs.setdefault(need, []).append(result)
    bad_files: list[tuple[str, str]] = []
    scored: dict[str, tuple[RunScores, dict[str, str], bool]] = {}
    for parts, members in needs.items():
        if not parts:  # everything it needs is cached: no images are read
            for result in members:
                scored[result.run_id] = (*_from_disk(result.run_dir, bad_files, result.rows),
                                         False)
            continue
        files, groups = [], []
        for result in members:
            for f in layout.parquet_files(result.run_dir / layout.IMAGES):
                files.append(str(f))
                groups.append(result.run_id)
        _ensure_ray()
        keep = {result.run_id: result.rows.select for result in members}
        skip: dict[str, dict[str, list[str]]] = {}
        for result in members:
            for part, hits in stored[result.run_id].hits.items():
                if part in parts and hits:
                    skip.setdefault(str(part), {})[result.run_id] = list(hits)
        columns = score_dataset(images_dataset(files, groups, bad_files, keep,
                                               annotations.metadata),
                                plan.only(list(parts)), spec.actors, spec.batch_size,
                                spec.gpus_per_actor, skip)
        for result in members:
            scored[result.run_id] = (*run_scores(result.run_id, columns, parts), True)

    # 4. per run
    for result in results:
        scores, result.unreadable, fresh = scored[result.run_id]
        result.count = scores.count
        _attach_cached(scores, cached[result.run_id])
        if stored[result.run_id].attach(scores) and not fresh:
            write_scores(result.run_dir, scores)
        if fresh:
            stored[result.run_id].keep(scores)
            write_scores(result.run_dir, scores)
            write_unreadable(result.run_dir, result.unreadable)
            for extractor in plan.features():
                column = feature_column(extractor)
                if extractor not in cached[result.run_id] and column in scores.columns:
                    write_features(result.run_dir, extractor, protocols[extractor],
                                   scores.columns["row_id"], scores.columns[column])
        attach_annotations(scores.columns, annotations)
        ctx = Context(spec, shared.references, warnings=list(shared.warnings))
        ctx.memo["category_reason"] = annotations.reason
        ctx.warnings += row_notes[result.run_id] + _unreadable_warnings(result, bad_files)
        stats, result.missing = statistics(scores, ctx, spec.metrics, skipped)
        counts = scores.counts(spec.bootstrap.resamples, spec.bootstrap.seed)
        zero_width: dict[str, str] = {}
        result.metrics = with_intervals(stats, counts, spec.bootstrap.level, zero_width)
        for why in dict.fromkeys(zero_width.values()):
            keys = ", ".join(k for k, w in zero_width.items() if w == why)
            ctx.warnings.append(f"{result.run_id}: the interval of {keys} has zero width: {why}")
        result.warnings = list(ctx.warnings)
        for name, reason in result.missing.items():
            log.warning("%s: %s missing: %s", result.run_id, name, reason)
        write_record(result.run_dir, {"spec": spec.model_dump(mode="json"),
                                      "protocols": protocols, "references": references})
    protocol = _protocol(spec, protocols)
    if references:
        protocol["reference"] = references.get(spec.feature_extractor,
                                               next(iter(references.values())))
        protocol["references"] = references
    return results, protocol


def _needed(result: RunResult, plan: ScorePlan, protocols: dict[str, dict[str, Any]],
            cached: dict[str, dict[str, np.ndarray]], stored: StoredScores) -> tuple[Part, ...]:
    """The parts a run still needs; features found in its cache go into `cached`, per-row
    scores found in theirs into `stored`."""
    hashes = image_hashes(result.run_dir, result.rows)
    need = []
    for part in plan.keys():
        if part.scorer == FEATURES:
            hit = read_features(result.run_dir, part.extractor, protocols[part.extractor], hashes)
            if hit is not None:
                cached[part.extractor] = hit
                continue
        elif stored.covers(part):
            continue
        need.append(part)
    return tuple(need)


def _from_disk(run_dir: Location, bad_files: list[tuple[str, str]], rows: SpecRows
               ) -> tuple[RunScores, dict[str, str]]:
    """A run's rows without reading images (all its features are cached): identity and request
    columns of the spec's rows from the image files, less the rows the last evaluation left out
    as unreadable."""
    skipped = left_out(run_dir)
    columns = (read_rows(run_dir, skipped, bad_files, rows)
               or {"row_id": np.array([], dtype=object)})
    return RunScores(run_dir.name, columns), skipped


def _attach_cached(scores: RunScores, cached: dict[str, dict[str, np.ndarray]]) -> None:
    for extractor, rows in cached.items():
        aligned = align(rows, scores.columns["row_id"])
        if aligned is not None:
            scores.columns[feature_column(extractor)] = aligned
        elif scores.count:
            scores.part_errors[Part(FEATURES, extractor)] = (
                "the feature cache does not hold every row; evaluate the run again")


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


def _features_of(table: pa.Table, extractor: str, weights: str | None, device: str,
                 spec: EvalSpec) -> np.ndarray:
    only = ScorePlan.of_features({extractor: weights}, device)
    columns = score_dataset(table_dataset(table, "reference"), only, spec.actors, spec.batch_size,
                            spec.gpus_per_actor)
    error = error_column(Part(FEATURES, extractor))
    if error in columns:
        raise RuntimeError(columns[error][0])
    order = np.argsort(columns["row_id"].astype(np.int64))
    return columns[feature_column(extractor)][order]


def _protocol(spec: EvalSpec, protocols: dict[str, dict[str, Any]]) -> dict[str, Any]:
    metrics = {m: registry.metrics()[m] for m in spec.metrics}
    protocol: dict[str, Any] = {
        "metrics": {name: {"key": m.key, "higher_is_better": m.higher_is_better,
                           "description": m.description} for name, m in metrics.items()},
        "feature_extractor": spec.feature_extractor, "backend": spec.backend,
        "kid": {"subsets": spec.kid_subsets, "subset_size": spec.kid_subset_size, "seed": 0},
        **setting_values(spec),
        "bootstrap": {**spec.bootstrap.model_dump(), "unit": "prompt (its images together)",
                      "interval": "percentile, shifted onto the value"},
        "extractor_protocols": protocols, "versions": track.versions(),
    }
    if spec.feature_extractor in protocols:
        protocol["extractor_protocol"] = protocols[spec.feature_extractor]
    return protocol
