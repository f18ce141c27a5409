"""Run a job: request rows -> Ray Data `map_batches(Generator)` on an actor pool -> Parquet.

One dataset per model: its actors load the model once and serve every run of the sweep that uses
it (sampler, steps, guidance and eta are row columns; the Generator groups rows by settings and
swaps schedulers per group). The driver writes what the pool returns, so the output folder only
has to exist where the driver runs. Crashed actors are Ray's to restart (`max_restarts`) and their
batches Ray's to retry (`max_task_retries`); a killed driver loses at most one checkpoint, and the
rerun generates only the rows that are missing.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darkroom.jobs import output
from darkroom.jobs.lease import JobLease
from darkroom.jobs.plan import Run, describe, expand, request_rows, run_info
from darkroom.jobs.prompts import Prompt, load_prompts
from darkroom.jobs.spec import JobSpec
from darkroom.platform import layout
from darkroom.platform.cluster import connect_ray
from darkroom.platform.families import ModelSpec
from darkroom.platform.records import sha256

MAX_BLOCKS = 2000  # from_items blocks; one block is about one batch, so a retry redoes one batch


class JobFailed(RuntimeError):
    """The work itself failed (too many bad rows, a pool that cannot start): exit code 1."""


@dataclass
class JobResult:
    """What one invocation of a job did: rows made and failed, timings, metrics."""

    job_dir: Path
    runs: list[Run]
    generated: int = 0
    failed: int = 0
    seconds: float = 0.0
    new: dict[str, int] = field(default_factory=dict)  # run_id -> images made by this invocation
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)


def job_dir_of(spec: JobSpec) -> Path:
    """OUTPUT/<job name>: where a job's runs are written."""
    return Path(spec.output).expanduser() / spec.name


def run_job(spec: JobSpec, *, dry_run: bool = False, evaluate: bool = True,
            log: Callable[[str], None] = print) -> JobResult:
    """Generate every missing row of the job, then (if the spec says so) evaluate it.

    One invocation at a time writes a job folder: a second one is refused (`JobBusy`) while the
    first holds the folder's lease.
    """
    started = time.perf_counter()
    # 1. Plan: prompts and runs.
    prompts = load_prompts(spec.prompts)
    runs = expand(spec)
    job_dir = job_dir_of(spec)
    result = JobResult(job_dir, runs)
    if dry_run:
        log(describe(spec, runs, len(prompts)))
        return result
    log(describe(spec, runs, len(prompts)).splitlines()[0])
    with JobLease(job_dir):
        # 2. What earlier invocations wrote, checked against this spec before anything is
        #    written: a refused spec leaves the folder (job.yaml included) as it was.
        todo, earlier_errors, total = _missing_rows(spec, runs, prompts, job_dir, log)
        output.write_job_files(job_dir, spec.dump(),
                               [run_info(spec, r, len(prompts)) for r in runs])
        allowed = spec.allowed_errors(total)

        # 3. Generate, one actor pool per model.
        missing = sum(len(rows) for rows in todo.values())
        if missing == 0:
            log(f"nothing to generate: all {total} rows of {len(runs)} run(s) are already in "
                f"{job_dir}")
        else:
            log(f"generating {missing} of {total} rows ({total - missing} already done) "
                f"into {job_dir}")
            _generate_all(spec, todo, job_dir, earlier_errors, allowed, result, log)

        # 4. Timing, summary, error budget, evaluation.
        for run in runs:
            result.timings[run.run_id] = output.write_timing(job_dir / run.run_id)
        result.seconds = time.perf_counter() - started
        log(summary(runs, result))
        errors = sum(t["errors"] for t in result.timings.values())
        if errors > allowed:
            raise JobFailed(
                f"{errors} row(s) failed, more than the error budget allows ({allowed} of "
                f"{total}); reasons are in {job_dir}/*/{layout.ERRORS}/; fix the inputs or raise "
                "`error_budget`"
            )
        if spec.eval and evaluate:
            result.metrics = _evaluate(spec, job_dir, runs)
    return result


def _generate_all(spec: JobSpec, todo: dict[str, list[dict]], job_dir: Path, failed: int,
                  allowed: int, result: JobResult, log: Callable[[str], None]) -> None:
    """Every model's missing rows through its actor pool, written as they come."""
    # torch before Ray: loaded after Ray's and Arrow's libraries in a cluster job's driver,
    # libtorch_cpu failed to load ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so")
    import darkroom.platform.generator  # noqa: F401

    connect_ray(log, log_to_driver=True)
    writer = output.Writer(job_dir, spec.compute.checkpoint_rows,
                           spec.compute.checkpoint_seconds, log)
    try:
        for label, rows in todo.items():
            if rows:
                failed = _generate(spec, label, rows, writer, failed, allowed, log)
    finally:
        writer.flush()
        result.new = dict(writer.written)
        result.generated = sum(writer.written.values())
        result.failed = sum(writer.failed.values())


def _missing_rows(spec: JobSpec, runs: list[Run], prompts: list[Prompt], job_dir: Path,
                  log: Callable[[str], None]) -> tuple[dict[str, list[dict]], int, int]:
    """Rows still to generate, grouped by model label; errors already recorded; all rows."""
    todo: dict[str, list[dict]] = defaultdict(list)
    earlier_errors = total = 0
    for run in runs:
        rows = request_rows(spec, run, prompts)
        expected = {row["row_id"]: row_inputs(row) for row in rows}
        done, errors = output.done_rows(job_dir / run.run_id, expected, log)
        earlier_errors += errors
        total += len(rows)
        todo[run.model.label] += [row for row in rows if row["row_id"] not in done]
    return todo, earlier_errors, total


def row_inputs(row: dict[str, Any]) -> dict[str, Any]:
    """A request row's inputs as its image row records them (`output.ROW_INPUTS`)."""
    label = row.get("class_label")
    if label is not None and not str(label).lstrip("-").isdigit():
        recorded: Any = output.ANY  # a class name: the model resolves it to an id
    else:
        recorded = None if label is None else int(label)
    control = row.get("control_image")
    return {
        "prompt": row.get("prompt") or "",
        "negative_prompt": row.get("negative_prompt") or "",
        "class_label": recorded,
        "control_image_sha256": None if control is None else sha256(control),
    }


def _generate(spec: JobSpec, label: str, rows: list[dict], writer: output.Writer, failed: int,
              allowed: int, log: Callable[[str], None]) -> int:
    """Run one model's rows through its actor pool; returns the failed-row count so far."""
    model = next(m for m in spec.models if m.label == label)
    actors = spec.compute.actors
    log(f"model {label}: {len(rows)} rows on {actors.min}-{actors.max} actor(s)")
    for batch in dataset(spec, model, rows).iter_batches(batch_size=None, batch_format="pyarrow"):
        failed += writer.add(batch)
        if failed > allowed:
            writer.flush()
            raise JobFailed(
                f"{failed} row(s) failed, more than the error budget allows ({allowed}); "
                f"stopped early; reasons are in {writer.job_dir}/*/{layout.ERRORS}/"
            )
    return failed


def dataset(spec: JobSpec, model: ModelSpec, rows: list[dict]) -> Any:
    """The request rows of one model mapped through a pool of Generator actors (lazy)."""
    import ray
    from ray.data import ActorPoolStrategy

    from darkroom.platform.generator import Generator

    compute = spec.compute
    batch_size = spec.generation.batch_size
    blocks = min(MAX_BLOCKS, math.ceil(len(rows) / batch_size))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor fault tolerance: it comes in the remote
        # args, which warn that they will be replaced by named ones
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            Generator,
            fn_constructor_kwargs={
                "model": model.model_dump(mode="json"),
                "runtime": spec.runtime.model_dump(mode="json"),
            },
            compute=ActorPoolStrategy(min_size=compute.actors.min, max_size=compute.actors.max),
            batch_size=batch_size,
            num_cpus=compute.cpus_per_actor,
            num_gpus=compute.gpus_per_actor,
            max_restarts=compute.max_restarts,
            max_task_retries=compute.max_task_retries,
        )


def summary(runs: list[Run], result: JobResult) -> str:
    """The table printed at the end of `darkroom run`: one line per run."""
    lines = [f"{'run':<14}{'model':<20}{'sampler':<20}{'steps':>6}{'guidance':>9}{'images':>8}"
             f"{'new':>6}{'errors':>7}{'seconds':>9}{'images/s':>10}"]
    for run in runs:
        timing = result.timings.get(run.run_id, {})
        rate = timing.get("images_per_s")
        lines.append(
            f"{run.run_id:<14}{run.model.label[:19]:<20}{run.sampler.name[:19]:<20}{run.steps:>6}"
            f"{run.guidance_scale:>9g}{timing.get('images', 0):>8}"
            f"{result.new.get(run.run_id, 0):>6}"
            f"{timing.get('errors', 0):>7}"
            f"{timing.get('seconds', 0):>9.2f}{'-' if rate is None else f'{rate:.1f}':>10}"
        )
    lines.append(f"{result.generated} image(s) generated, {result.failed} failed, in "
                 f"{result.seconds:.1f} s (seconds per run: actor time)")
    return "\n".join(lines)


def _evaluate(spec: JobSpec, job_dir: Path, runs: list[Run]) -> list[dict[str, Any]]:
    from darkroom.evals.runner import evaluate_job  # evaluation is optional and heavy

    assert spec.eval is not None
    return evaluate_job(
        job_dir, spec.eval, spec.tracking,
        experiment=spec.tracking.experiment or spec.name,
        job_spec=spec.dump(),
        run_ids=[r.run_id for r in runs],
    )
