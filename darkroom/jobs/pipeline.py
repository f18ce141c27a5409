"""Run a job: prompts -> request rows -> `map_batches(GenerateAndWrite)` on an actor pool, where
each actor writes and commits its own Parquet files. The driver only plans, holds the lease, and
counts what the workers report (a few bytes per file); no prompt file and no image passes
through it, and its memory does not grow with the number of prompts or rows.

One dataset per model: its actors load the model once and serve every run of the sweep that uses
it (sampler, steps, guidance and eta are row columns; the generator groups rows by settings and
swaps schedulers per group). Crashed actors are Ray's to restart (`max_restarts`) and their
calls Ray's to retry (`max_task_retries`): a retried call rewrites its own files, so every row is
written once. A killed driver loses at most the calls in flight; the rerun generates only the
rows that are missing.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from darkroom.evals.reporting.naming import run_names
from darkroom.jobs import failures, output, resume
from darkroom.jobs.devices import device_problems
from darkroom.jobs.lease import JobLease
from darkroom.jobs.plan import Run, describe, expand, expansion, run_info
from darkroom.jobs.prompts import PromptError, count_prompts
from darkroom.jobs.spec import MAX_ROWS_PER_RUN, JobSpec
from darkroom.jobs.stream import Prompts, open_prompts
from darkroom.jobs.workers import GenerateAndWrite, check_block, expand_missing
from darkroom.platform import console
from darkroom.platform.cluster import connect_ray
from darkroom.platform.config import Problem, SpecError
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError

EXPANSION_ROWS = 4096  # request rows made per expansion call, about
CALLS_PER_ACTOR = 4  # small jobs: split the work so every actor of the pool gets some


class JobFailed(RuntimeError):
    """The work itself failed (too many bad rows, a pool that cannot start): exit code 1."""


@dataclass
class JobResult:
    """What one invocation of a job did: rows made and failed, timings, metrics."""

    job_dir: Location
    runs: list[Run]
    generated: int = 0
    failed: int = 0
    seconds: float = 0.0
    new: dict[str, int] = field(default_factory=dict)  # run_id -> images made by this invocation
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    driver_bytes: int = 0  # bytes of worker results that reached the driver while generating
    losses: list[str] = field(default_factory=list)  # work lost with a node or an actor
    redone: int = 0  # rows made in new passes after a pass lost work


def job_dir_of(spec: JobSpec) -> Location:
    """OUTPUT/<job name>: where a job's runs are written (a local path or a URI)."""
    return storage.location(spec.output) / spec.name


@failures.reported_plainly
def run_job(spec: JobSpec, *, dry_run: bool = False, evaluate: bool = True,
            log: Callable[[str], None] = print) -> JobResult:
    """Generate every missing row of the job, then (if the spec says so) evaluate it.

    One invocation at a time writes a job folder: a second one is refused (`JobBusy`) while the
    first holds the folder's lease.
    """
    started = time.perf_counter()
    storage.set_options(spec.output, spec.storage_options)
    runs = expand(spec)
    job_dir = job_dir_of(spec)
    result = JobResult(job_dir, runs)
    if dry_run:
        log(describe(spec, runs, count_prompts(spec.prompts)))
        return result
    device_problems(spec, spec.name)  # before anything is written
    with JobLease(job_dir) as lease:
        # torch before Ray: loaded after Ray's and Arrow's libraries in a cluster job's driver,
        # libtorch_cpu failed to load ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so")
        import darkroom.platform.engine.generator  # noqa: F401

        connect_ray(log, log_to_driver=True)
        with console.current().phase("reading prompts", unit="runs") as reading:
            # 1. Prompts: read and checked on the workers, kept in the object store.
            prompts = _open_prompts(spec)
            log(describe(spec, runs, prompts.count).splitlines()[0])
            # 2. What earlier invocations wrote (files verified on the workers), then the
            #    check pass: the rows still missing, and no done row whose inputs changed. A
            #    refused spec leaves the folder (job.yaml included) as it was.
            states = resume.scan(job_dir, [r.run_id for r in runs], spec.storage_options, log)
            rows, missing, made = _check(spec, runs, prompts, states)
            _count_spec_rows(states, rows, missing, made)
            reading.advance(len(runs))
        lease.check()
        output.write_job_files(job_dir, spec.dump(),
                               [run_info(spec, r, prompts.count) for r in runs])
        total = sum(rows.values())
        allowed = spec.allowed_errors(total)

        # 3. Generate, one actor pool per model; the workers write.
        todo = sum(missing.values())
        if todo == 0:
            log(f"nothing to generate: all {total} rows of {len(runs)} run(s) are already in "
                f"{job_dir}")
        else:
            log(f"generating {todo} of {total} rows ({total - todo} already done) into "
                f"{job_dir}")
            earlier = sum(s.errors for s in states.values())
            _generate_all(spec, runs, prompts, states, missing, earlier, allowed, result, log,
                          lease)

        # 4. Timing, summary, error budget, evaluation.
        lease.check()
        for run in runs:
            state = states[run.run_id]
            result.timings[run.run_id] = output.write_timing(job_dir / run.run_id, output.timing(
                state.images, state.seconds, state.errors))
        result.seconds = time.perf_counter() - started
        log(summary(runs, result, run_names({r.run_id: run_info(spec, r, prompts.count)
                                             for r in runs})))
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


def _open_prompts(spec: JobSpec) -> Prompts:
    try:
        prompts = open_prompts(spec.prompts)
    except PromptError as err:
        raise SpecError("job", [Problem(err.path, err.message, err.value)]) from err
    rows = prompts.count * spec.prompts.images_per_prompt
    if rows > MAX_ROWS_PER_RUN:
        raise SpecError("job", [Problem(
            "prompts.images_per_prompt", f"{prompts.count} prompts x "
            f"{spec.prompts.images_per_prompt} images = {rows} rows per run, more than "
            f"{MAX_ROWS_PER_RUN}; split the prompts over several jobs or use `limit`")])
    return prompts


def _by_model(spec: JobSpec, runs: list[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run.model.label].append(run)
    return {m.label: grouped[m.label] for m in spec.models if grouped[m.label]}


def _expansion_batch(spec: JobSpec, runs: list[Run]) -> int:
    """Prompts per expansion call, so that a call makes about EXPANSION_ROWS request rows."""
    return max(1, EXPANSION_ROWS // (len(runs) * spec.prompts.images_per_prompt))


def _done(states: dict[str, resume.RunState], runs: list[Run]) -> list[Any]:
    return [ref for run in runs for ref in states[run.run_id].done]


def _check(spec: JobSpec, runs: list[Run], prompts: Prompts, states: dict[str, resume.RunState]
           ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """The check pass on the workers: per run, its rows, how many are missing and how many are
    already images; a done row whose inputs changed is refused (exit code 2)."""
    rows: dict[str, int] = defaultdict(int)
    missing: dict[str, int] = defaultdict(int)
    made: dict[str, int] = defaultdict(int)
    for model_runs in _by_model(spec, runs).values():
        if not _done(states, model_runs):  # nothing written yet: every row is missing
            for run in model_runs:
                rows[run.run_id] = missing[run.run_id] = (
                    prompts.count * spec.prompts.images_per_prompt)
            continue
        ds = prompts.dataset().map_batches(
            check_block, batch_format="pyarrow", batch_size=_expansion_batch(spec, model_runs),
            fn_kwargs={"plan": expansion(spec, model_runs), "done": _done(states, model_runs)},
        )
        for batch in _results(ds):
            for row in batch.to_pylist():
                if row["problem"]:
                    raise UserError(row["problem"])
                rows[row["run_id"]] += row["rows"]
                missing[row["run_id"]] += row["missing"]
                made[row["run_id"]] += row["done_images"]
    return rows, missing, made


def _count_spec_rows(states: dict[str, resume.RunState], rows: dict[str, int],
                     missing: dict[str, int], made: dict[str, int]) -> None:
    """Count only the rows the spec asks for (summary, timing.json, error budget): a folder can
    hold more, made before the job was narrowed (a lower `limit` or `images_per_prompt`). Their
    actor seconds are taken at the run's mean per image."""
    for run_id, state in states.items():
        done = rows[run_id] - missing[run_id]
        if state.images + state.errors <= done:
            continue
        images = made[run_id]
        state.seconds = state.seconds * images / state.images if state.images else 0.0
        state.images, state.errors = images, done - images


def _generate_all(spec: JobSpec, runs: list[Run], prompts: Prompts,
                  states: dict[str, resume.RunState], missing: dict[str, int], failed: int,
                  allowed: int, result: JobResult, log: Callable[[str], None],
                  lease: JobLease) -> None:
    """Every model's missing rows through its actor pool; the driver tallies what is written.
    A pass that loses work with a node or an actor is followed by a pass over what is still
    missing, on the nodes that remain (`jobs.failures`)."""
    invocation = output.invocation_id()
    before = {run_id: (s.images, s.errors) for run_id, s in states.items()}
    nodes = failures.alive_nodes()
    for label, model_runs in _by_model(spec, runs).items():
        for passes in range(failures.LOST_PASSES + 1):
            todo = sum(missing[r.run_id] for r in model_runs)
            if not todo:
                break
            actors = spec.compute.actors
            log(f"model {label}: {todo} rows on {actors.min}-{actors.max} actor(s)")
            result.redone += todo if passes else 0
            failed, lost = _one_pass(spec, model_runs, prompts, states, invocation, todo, failed,
                                     allowed, result, log, lease)
            if lost is None:
                break
            if passes == failures.LOST_PASSES:
                raise JobFailed(f"model {label}: {passes + 1} passes lost work with nodes or "
                                f"actors, the last {lost}; rerun when the cluster is steady")
            result.losses.append(f"model {label}: a pass lost work ({lost})")
            log(f"model {label}: lost work with a node or an actor ({lost}); going on with the "
                "nodes that remain")
            prompts, missing, failed = _after_loss(spec, model_runs, states, before, missing,
                                                   result, log)
    gone = failures.lost_nodes(nodes)
    if gone:
        result.losses.insert(0, f"{len(gone)} node(s) left the cluster during the job: "
                                f"{', '.join(gone)}")


def _one_pass(spec: JobSpec, runs: list[Run], prompts: Prompts,
              states: dict[str, resume.RunState], invocation: str, todo: int, failed: int,
              allowed: int, result: JobResult, log: Callable[[str], None],
              lease: JobLease) -> tuple[int, str | None]:
    """One pass over a model's missing rows: (failed rows, None), or (failed rows, what was
    lost) when a node or an actor went away with work."""
    ds = dataset(spec, runs, prompts, _done(states, runs), invocation, todo,
                 lease_token=lease.token)
    try:
        with console.current().phase(f"generating {runs[0].model.label}", todo,
                                     "images") as progress:
            return _tally(ds, states, failed, allowed, result, log, lease, progress), None
    except Exception as err:
        lost = failures.lost_work(err)
        if lost is None:
            raise
    del ds
    # the lost pass's actor pool, unreferenced: Ray ends its actors, so that one it restarted
    # meanwhile does not hold a CPU the next pass needs
    gc.collect()
    return failed, lost


def _after_loss(spec: JobSpec, runs: list[Run], states: dict[str, resume.RunState],
                before: dict[str, tuple[int, int]], missing: dict[str, int], result: JobResult,
                log: Callable[[str], None]) -> tuple[Prompts, dict[str, int], int]:
    """What a lost pass left: the files its calls committed count, their half-written ones go
    (`resume.scan`), and the prompts are read again (their blocks may have gone with the node).
    Returns the prompts, the rows still missing, and the failed rows."""
    prompts = _open_prompts(spec)
    states.update(resume.scan(result.job_dir, [r.run_id for r in runs], spec.storage_options,
                              log))
    result.new = {run_id: states[run_id].images - images
                  for run_id, (images, _) in before.items() if states[run_id].images > images}
    result.generated = sum(result.new.values())
    result.failed = sum(states[run_id].errors - errors for run_id, (_, errors) in before.items())
    missing = {**missing, **_check(spec, runs, prompts, states)[1]}
    return prompts, missing, sum(s.errors for s in states.values())


def _tally(ds: Any, states: dict[str, resume.RunState], failed: int, allowed: int,
           result: JobResult, log: Callable[[str], None], lease: JobLease,
           progress: console.Phase) -> int:
    """Count what one pass's workers wrote, as they report it; returns the failed rows."""
    for batch in _results(ds):
        lease.check()
        result.driver_bytes += batch.nbytes
        for row in batch.to_pylist():
            state = states[row["run_id"]]
            if row["kind"] == layout.IMAGES:
                state.images += row["rows"]
                state.seconds += row["seconds"]
                result.new[row["run_id"]] = result.new.get(row["run_id"], 0) + row["rows"]
                result.generated += row["rows"]
                console.current().detail(f"  {row['run_id']}: wrote {row['rows']} image row(s)")
            else:
                state.errors += row["rows"]
                result.failed += row["rows"]
                failed += row["rows"]
                log(f"  {row['run_id']}: {row['rows']} row(s) failed ({row['error']})")
            progress.advance(row["rows"])
        if failed > allowed:
            raise JobFailed(
                f"{failed} row(s) failed, more than the error budget allows ({allowed}); "
                f"stopped early; reasons are in {result.job_dir}/*/{layout.ERRORS}/"
            )
    return failed


def dataset(spec: JobSpec, runs: list[Run], prompts: Prompts, done: list[Any], invocation: str,
            todo: int, generator_class: type | None = None,
            lease_token: str | None = None) -> Any:
    """The missing request rows of one model's runs through a pool of actors that generate and
    write them (lazy); each output row describes one written file. With `lease_token` the
    actors write only while the folder's lease carries it."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    compute = spec.compute
    batch_size = spec.generation.batch_size
    per_call = math.ceil(todo / (compute.actors.max * CALLS_PER_ACTOR))
    per_call = min(compute.checkpoint_rows, batch_size * math.ceil(per_call / batch_size))
    # Prompts in blocks that expand to about one call each, so every actor of the pool gets
    # work (one block reaches one actor); split before the actors hold the CPUs.
    per_block = max(1, per_call // (len(runs) * spec.prompts.images_per_prompt))
    expanded = prompts.split(per_block).dataset().map_batches(
        expand_missing, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"plan": expansion(spec, runs), "done": done},
        # light work that must not wait for CPUs the actors hold; a few at a time, as each
        # holds the rows already done
        num_cpus=0, compute=TaskPoolStrategy(size=max(2, compute.actors.max)),
    )
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor fault tolerance: it comes in the remote
        # args, which warn that they will be replaced by named ones
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return expanded.map_batches(
            GenerateAndWrite,
            fn_constructor_kwargs={
                "model": runs[0].model.model_dump(mode="json"),
                "runtime": spec.runtime.model_dump(mode="json"),
                "job_dir": str(job_dir_of(spec)),
                "storage_options": spec.storage_options,
                "invocation": invocation,
                "chunk": batch_size,
                "generator_class": generator_class,
                "lease_token": lease_token,
            },
            compute=ActorPoolStrategy(min_size=compute.actors.min, max_size=compute.actors.max),
            batch_size=max(1, per_call),
            batch_format="pyarrow",
            num_cpus=compute.cpus_per_actor,
            num_gpus=compute.gpus_per_actor,
            max_restarts=compute.max_restarts,
            max_task_retries=compute.max_task_retries,
        )


def _results(ds: Any) -> Iterator[Any]:
    """The small result batches of a pass, as they come."""
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


def summary(runs: list[Run], result: JobResult, names: dict[str, str] | None = None) -> str:
    """The table printed at the end of `darkroom run`: one line per run, named as MLflow and
    `darkroom compare` name it (`names`, run id -> name), with its folder."""
    names = names or {r.run_id: r.run_id for r in runs}
    width = max(len("run"), *(len(names[r.run_id]) for r in runs)) + 2
    lines = [f"{'run':<{width}}{'images':>7}{'new':>6}{'errors':>7}{'seconds':>9}"
             f"{'images/s':>10}  folder"]
    for run in runs:
        timing = result.timings.get(run.run_id, {})
        rate = timing.get("images_per_s")
        lines.append(
            f"{names[run.run_id]:<{width}}{timing.get('images', 0):>7}"
            f"{result.new.get(run.run_id, 0):>6}{timing.get('errors', 0):>7}"
            f"{timing.get('seconds', 0):>9.2f}{'-' if rate is None else f'{rate:.1f}':>10}"
            f"  {run.run_id}"
        )
    lines.append(f"{result.generated} image(s) generated, {result.failed} failed, in "
                 f"{result.seconds:.1f} s (seconds per run: actor time) in {result.job_dir}")
    if result.losses:
        lines += ["lost and redone:", *(f"  {loss}" for loss in result.losses),
                  f"  {result.redone} row(s) were made in new passes on the nodes that remain; "
                  "every row is written once"]
    return "\n".join(lines)


def _evaluate(spec: JobSpec, job_dir: Location, runs: list[Run]) -> list[dict[str, Any]]:
    from darkroom.evals.runner import evaluate_job  # evaluation is optional and heavy

    assert spec.eval is not None
    return evaluate_job(
        job_dir, spec.eval, spec.tracking,
        experiment=spec.tracking.experiment or spec.name,
        job_spec=spec.dump(),
        run_ids=[r.run_id for r in runs],
    )
