"""Evaluate a job's output folder: per-image pass on actors, corpus math on the driver, MLflow.

`evaluate_job` is what a job's `eval:` section and `darkroom eval` both call.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkroom.evals import tracking as track
from darkroom.evals.extractors import check_extractor, extractor_protocol
from darkroom.evals.metrics import METRICS, Context, RunScores, Unavailable
from darkroom.evals.reference import reference_stats
from darkroom.evals.scoring import ScorePlan, images_dataset, score_dataset, table_dataset
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform import layout
from darkroom.platform.errors import UserError
from darkroom.platform.records import contact_sheet

log = logging.getLogger("darkroom.evals")
SCORES_FILE = "scores.parquet"
PASSED_THROUGH = {"row_id", "group", "prompt", "class_label", "features"}
DISTANCES = ("fid", "kid")


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    info: dict[str, Any]
    timing: dict[str, Any]
    count: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id, "images": self.count,
                "metrics": dict(self.metrics), "missing": dict(self.missing),
                "warnings": list(self.warnings)}


def evaluate_job(job_dir: Path, eval_spec: EvalSpec, tracking: TrackingSpec, *,
                 experiment: str, job_spec: dict, run_ids: list[str] | None = None) -> list[dict]:
    """Evaluate the runs of a job folder and log them to MLflow.

    Returns one dict per run: run_id, mlflow_run_id, images, metrics {name: value}, missing
    {metric: reason}, warnings. A metric that cannot be computed (no weights, no reference, no
    prompts) is missing with its reason; the others are still computed and logged.
    """
    job_dir = Path(job_dir).resolve()
    eval_spec = EvalSpec.model_validate(eval_spec)
    tracking = TrackingSpec.model_validate(tracking or {})
    results, protocol = evaluate_runs(select_runs(job_dir, run_ids), eval_spec)
    log_job(results, protocol, job_dir, tracking, experiment=experiment, job_spec=job_spec,
            eval_spec=eval_spec)
    return [r.summary() for r in results]


def select_runs(job_dir: Path, run_ids: list[str] | None) -> list[Path]:
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
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)


def evaluate_runs(run_dirs: list[Path], spec: EvalSpec) -> tuple[list[RunResult], dict]:
    """1. plan the per-image parts; 2. reference statistics; 3. the pass over all runs' images
    on actors; 4. per run: scores Parquet and corpus metrics."""
    results = [RunResult(d.name, d, layout.read_json(d / layout.RUN_INFO), _timing(d))
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

    # 3. one pass over every run's images
    files, groups = [], []
    for result in results:
        for f in layout.parquet_files(result.run_dir / layout.IMAGES):
            files.append(str(f))
            groups.append(result.run_id)
    columns: dict[str, np.ndarray] = {}
    if files and plan.parts():
        _ensure_ray()
        columns = score_dataset(images_dataset(files, groups), plan, spec.actors, spec.batch_size,
                                spec.gpus_per_actor)

    # 4. per run
    for result in results:
        scores = _run_scores(result.run_id, columns)
        result.count = scores.count if columns else _count_rows(result.run_dir)
        if columns:
            write_scores(result.run_dir, scores)
        ctx = Context(spec, shared.reference, warnings=list(shared.warnings))
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


def _run_scores(run_id: str, columns: dict[str, np.ndarray]) -> RunScores:
    if not columns:
        return RunScores(run_id, {"row_id": np.array([], dtype=object)})
    mine = columns["group"] == run_id
    order = np.argsort(columns["row_id"][mine].astype(str), kind="stable")
    picked = {k: v[mine][order] for k, v in columns.items() if not k.startswith("error_")}
    errors = {k.removeprefix("error_"): str(v[mine][0]) for k, v in columns.items()
              if k.startswith("error_") and mine.any()}
    return RunScores(run_id, picked, errors)


def write_scores(run_dir: Path, scores: RunScores) -> Path | None:
    """Per-image scores keyed by row_id into <run>/scores/scores.parquet, merged with columns an
    earlier evaluation wrote; written under a dot-name and renamed, so readers never see half."""
    new = {k: v for k, v in scores.columns.items() if k not in PASSED_THROUGH}
    if not new or not scores.count:
        return None
    table = pa.table({"row_id": pa.array(scores.columns["row_id"].astype(str)),
                      **{k: pa.array(list(v)) for k, v in new.items()}})
    table = table.append_column("evaluated_at", pa.array(
        [dt.datetime.now(dt.UTC)] * len(table), pa.timestamp("us", tz="UTC")))
    folder = run_dir / layout.SCORES
    folder.mkdir(exist_ok=True)
    target = folder / SCORES_FILE
    if target.exists():
        old = pq.read_table(target)
        keep = [c for c in old.column_names if c not in table.column_names or c == "row_id"]
        if len(keep) > 1:
            table = table.join(old.select(keep), "row_id", join_type="left outer")
    fd, staging = tempfile.mkstemp(prefix=".scores-", suffix=".parquet", dir=folder)
    os.close(fd)
    try:
        pq.write_table(table.sort_by("row_id"), staging)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def _timing(run_dir: Path) -> dict[str, Any]:
    path = run_dir / layout.TIMING
    return layout.read_json(path) if path.exists() else {}


def _count_rows(run_dir: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows
               for f in layout.parquet_files(run_dir / layout.IMAGES))


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


# -- MLflow -------------------------------------------------------------------------------------


def log_job(results: list[RunResult], protocol: dict, job_dir: Path, tracking_spec: TrackingSpec,
            *, experiment: str, job_spec: dict, eval_spec: EvalSpec) -> None:
    """A parent run for this invocation (job folder + spec hash), a child run per result."""
    client = track.client(tracking_spec.uri)
    exp = track.experiment_id(client, tracking_spec.experiment or experiment)
    digest = track.spec_hash(job_spec)
    versions = {f"darkroom.version.{k}": v for k, v in track.versions().items()}
    parent = track.open_run(
        client, exp, track.path_key("job", job_dir, digest), f"{job_dir.name}-{digest[:8]}",
        {track.KIND: "job", "darkroom.spec_hash": digest, "darkroom.output": job_dir,
         **versions},
    )
    track.log_params(client, parent, {"job": job_dir.name, "runs": len(results)})
    ok = True
    try:
        for result in results:
            result.mlflow_run_id = _log_run(client, exp, parent, result, protocol, job_spec,
                                            digest, versions, eval_spec)
        track.log_files(client, parent, {
            "job_spec.json": track.to_json(job_spec),
            "metrics.json": track.to_json([r.summary() for r in results]),
            "eval_protocol.json": track.to_json(protocol),
        })
    except Exception:
        ok = False
        raise
    finally:
        track.finish(client, parent, ok)


def _log_run(client, exp: str, parent: str, result: RunResult, protocol: dict, job_spec: dict,
             digest: str, versions: dict, eval_spec: EvalSpec) -> str:
    info = result.info
    name = run_name(info, result.run_id)
    run = track.open_run(client, exp, track.path_key("run", result.run_dir), name, {
        track.KIND: "run", track.PARENT: parent, "darkroom.run_id": result.run_id,
        "darkroom.spec_hash": digest, "darkroom.output": result.run_dir, **versions,
        "darkroom.eval.feature_extractor": eval_spec.feature_extractor,
        "darkroom.eval.backend": eval_spec.backend,
    })
    ok = True
    try:
        changed = track.log_params(client, run, run_params(info, result))
        if changed:
            result.warnings.append(f"params changed since this run was first logged (kept the "
                                   f"first values): {', '.join(changed)}")
        metrics = dict(result.metrics)
        if result.timing.get("images_per_s"):
            metrics["images_per_s"] = result.timing["images_per_s"]
        if result.timing.get("images"):
            metrics["seconds_per_image"] = result.timing["seconds"] / result.timing["images"]
        metrics["images"] = result.count
        track.log_metrics(client, run, metrics, result.missing,
                             [METRICS[name].key for name in result.missing])
        client.set_tag(run, "darkroom.warnings", "\n".join(result.warnings)[:5000] or "none")
        track.log_files(client, run, {
            "contact_sheet.png": contact_sheet_png(result.run_dir, eval_spec.contact_sheet),
            "job_spec.json": track.to_json(job_spec),
            "run.json": track.to_json(info),
            "metrics.json": track.to_json({**result.summary(), "logged": metrics}),
            "eval_protocol.json": track.to_json(protocol),
        })
    except Exception:
        ok = False
        raise
    finally:
        track.finish(client, run, ok)
    return run


def run_name(info: dict[str, Any], fallback: str) -> str:
    sampler = (info.get("sampler") or {}).get("name", "?")
    label = info.get("model_label") or (info.get("model") or {}).get("model") or fallback
    return f"{label}-{sampler}-s{info.get('steps', '?')}-g{info.get('guidance_scale', '?')}"


def run_params(info: dict[str, Any], result: RunResult) -> dict[str, Any]:
    model = info.get("model") or {}
    sampler = info.get("sampler") or {}
    return {
        "model": info.get("model_label") or model.get("model"), "model.source": model.get("model"),
        "model.revision": model.get("revision") or _first(result.run_dir, "model_revision"),
        "sampler": sampler.get("name"),
        "sampler.overrides": track.to_json(sampler.get("overrides") or {}).strip(),
        "steps": info.get("steps"), "guidance_scale": info.get("guidance_scale"),
        "eta": info.get("eta"), "width": info.get("width"), "height": info.get("height"),
        "seed": info.get("seed"), "images_per_prompt": info.get("images_per_prompt"),
        "prompt_count": info.get("prompt_count"), "image_count": result.count,
    }


def _first(run_dir: Path, column: str) -> Any:
    files = layout.parquet_files(run_dir / layout.IMAGES)
    if not files:
        return None
    values = pq.read_table(files[0], columns=[column]).column(column).to_pylist()
    return values[0] if values else None


def contact_sheet_png(run_dir: Path, count: int) -> bytes:
    """The first `count` images (by row_id) with their prompts or class labels under them.

    Images the safety checker flagged (`nsfw_flag` in the run's scores) are withheld: a grey
    tile takes their place, so no flagged image reaches MLflow or a report.
    """
    table = layout.read_table(run_dir / layout.IMAGES,
                              columns=["row_id", "image", "prompt", "class_label"])
    images, labels = [], []
    if table is not None and len(table):
        flagged = _flagged(run_dir)
        table = table.sort_by("row_id").slice(0, count)
        rows = zip(table.column("row_id").to_pylist(), table.column("image").to_pylist(),
                   table.column("prompt").to_pylist(), table.column("class_label").to_pylist(),
                   strict=True)
        for row_id, image, prompt, label in rows:
            caption = prompt or (f"class {label}" if label is not None else "")
            if row_id in flagged:
                image, caption = WITHHELD, f"withheld: {caption}"
            images.append(image)
            labels.append(caption)
    buffer = io.BytesIO()
    contact_sheet(images, labels or None, columns=min(8, max(len(images), 1)),
                  cell=64).save(buffer, format="PNG")
    return buffer.getvalue()


WITHHELD = np.full((64, 64, 3), 128, np.uint8)


def _flagged(run_dir: Path) -> set[str]:
    path = run_dir / layout.SCORES / SCORES_FILE
    if not path.exists() or "nsfw_flag" not in pq.read_schema(path).names:
        return set()
    table = pq.read_table(path, columns=["row_id", "nsfw_flag"])
    return {r for r, f in zip(table.column("row_id").to_pylist(),
                              table.column("nsfw_flag").to_pylist(), strict=True) if f}
