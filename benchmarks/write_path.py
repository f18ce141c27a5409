"""Who writes the images: the driver (the earlier pipeline) or the workers (now), in one run; and
the driver's peak memory over a 1,000-prompt and a 1,000,000-prompt source.

    .venv/bin/python benchmarks/write_path.py                  # 1500 rows of 1024x1024, 2 rounds
    .venv/bin/python benchmarks/write_path.py --output s3://bucket/bench   # to a bucket

A fast fake model (no diffusion: every row gets a ready-made 1024x1024 PNG) stands in for the
Generator, so what is measured is the write path:
  1. driver writes: the actors return image rows, the driver gathers them (`iter_batches`) and
     writes Parquet files with page checksums, as the pipeline did before workers wrote;
  2. worker writes: `darkroom.jobs.pipeline.dataset`, whose actors write and commit their own
     files and return a few bytes per file.
For each: rows/s and the driver process's CPU seconds (user + system, `getrusage`) per 1,000 rows,
over the whole pass (actor start-up included, the same for both), and from the first result that
reaches the driver on ("steady": start-up left out, a little flattering to both, as rows other
actors finished before it count). Rounds alternate the two paths; medians are printed with ratios.

Then `darkroom run` on a 1,000-prompt and a 1,000,000-prompt .parquet source (each in its own
process, with the fake model and tiny images, `--memory-rows` rows of each, whole sources by
default), printing each driver's peak RSS (`ru_maxrss`) and the difference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class FakeGenerator:
    """The Generator's interface with no model: each row gets the same ready-made PNG."""

    side = 1024

    def __init__(self, model, runtime=None, **_) -> None:
        import numpy as np

        from darkroom.platform.data.records import encode_png

        y, x = np.mgrid[0:self.side, 0:self.side]
        noise = np.random.default_rng(0).integers(0, 24, (self.side, self.side, 3))
        pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1) + noise
        self.png = encode_png(pixels.clip(0, 255).astype(np.uint8))

    def generate(self, rows):
        from darkroom.platform.data.records import IMAGE_SCHEMA, sha256

        now = dt.datetime.now(dt.UTC)
        digest = sha256(self.png)
        out = []
        for row in rows:
            made = {name: row.get(name) for name in IMAGE_SCHEMA.names}
            made.update(image=self.png, image_sha256=digest, gen_seconds=0.001, created_at=now,
                        model="fake", class_label=None, error=None)
            out.append(made)
        return out

    def __call__(self, batch):
        """Ray Data entry point (driver-writes path): a pyarrow batch in, image rows out."""
        import pyarrow as pa

        from darkroom.platform.data.records import IMAGE_SCHEMA

        schema = IMAGE_SCHEMA.append(pa.field("error", pa.string()))
        return pa.Table.from_pylist(self.generate(batch.to_pylist()), schema=schema)


class TinyFakeGenerator(FakeGenerator):
    side = 8


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Rows, wall and driver CPU seconds from the first result batch on (steady state)."""

    def __init__(self) -> None:
        self.rows = self.total = 0
        self.started: tuple[float, float] | None = None
        self.whole = (time.perf_counter(), cpu_seconds())

    def add(self, rows: int) -> None:
        self.total += rows
        if self.started is None:  # the pool is up: measure from here
            self.started = (time.perf_counter(), cpu_seconds())
        else:
            self.rows += rows

    def result(self) -> dict[str, tuple[float, float]]:
        """{"whole" | "steady": (rows/s, driver CPU s per 1,000 rows)} for `total` rows."""
        assert self.started is not None
        now = (time.perf_counter(), cpu_seconds())
        out = {}
        for name, (wall, cpu), rows in (("whole", self.whole, self.total),
                                        ("steady", self.started, self.rows)):
            out[name] = (rows / (now[0] - wall), 1000 * (now[1] - cpu) / rows)
        return out


def job(prompts: int, output: str, name: str, rows_per_file: int, **changes) -> dict:
    data = {
        "name": name, "output": output,
        "prompts": {"list": [f"prompt {i}" for i in range(prompts)]},
        "models": [{"model": "tiny:sd"}], "sweep": {"sampler": ["ddim"], "steps": [2]},
        "generation": {"width": 1024, "height": 1024, "batch_size": 8},
        "compute": {"actors": {"min": 2, "max": 2}, "checkpoint_rows": rows_per_file},
        "runtime": {"device": "cpu"},
    }
    data.update(changes)
    return data


def driver_writes(spec, prompts, job_dir, rows_per_file: int, meter: Meter) -> int:
    """The earlier path: image rows come to the driver, which writes them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from ray.data import ActorPoolStrategy

    from darkroom.jobs.plan import expand, expansion
    from darkroom.jobs.workers import expand_missing
    from darkroom.platform.data import layout, storage
    from darkroom.platform.data.records import IMAGE_SCHEMA

    runs = expand(spec)
    per_block = max(1, spec.compute.checkpoint_rows)
    ds = prompts.split(per_block).dataset().map_batches(
        expand_missing, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"plan": expansion(spec, runs), "done": []}, num_cpus=0,
    ).map_batches(FakeGenerator, fn_constructor_kwargs={"model": {}}, batch_format="pyarrow",
                  compute=ActorPoolStrategy(size=spec.compute.actors.max),
                  batch_size=spec.generation.batch_size, num_cpus=1)
    buffered: list[pa.Table] = []
    rows = 0

    def flush() -> None:
        table = pa.concat_tables(buffered).select(IMAGE_SCHEMA.names).cast(IMAGE_SCHEMA)
        for run_id in pc.unique(table.column("run_id")).to_pylist():
            part = table.filter(pc.equal(table.column("run_id"), run_id))
            name = f"{time.time_ns() // 1000:016d}.parquet"
            storage.write_parquet(part, job_dir / run_id / layout.IMAGES / name)
        buffered.clear()

    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        buffered.append(batch)
        rows += batch.num_rows
        if sum(t.num_rows for t in buffered) >= rows_per_file:
            flush()
        meter.add(batch.num_rows)
    if buffered:
        flush()
    return rows


def worker_writes(spec, prompts, rows: int, meter: Meter) -> int:
    from darkroom.jobs import output
    from darkroom.jobs.pipeline import dataset
    from darkroom.jobs.plan import expand

    runs = expand(spec)
    ds = dataset(spec, runs, prompts, [], output.invocation_id(), rows,
                 generator_class=FakeGenerator)
    written = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = sum(batch.column("rows").to_pylist())
        written += rows
        meter.add(rows)
    return written


def compare_paths(args: argparse.Namespace) -> None:
    import ray

    from darkroom.jobs.jobfile import validate
    from darkroom.jobs.output import write_job_files
    from darkroom.jobs.plan import expand, run_info
    from darkroom.jobs.stream import open_prompts
    from darkroom.platform.data import storage

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    root = args.output or tempfile.mkdtemp(prefix="write-path-")
    print(f"{args.rows} rows of {FakeGenerator.side}x{FakeGenerator.side} PNG "
          f"({len(FakeGenerator({}).png) / 1e6:.2f} MB each), 2 actors, {args.rows_per_file} "
          f"rows per file, {os.cpu_count()} CPUs, output {root}")
    results: dict[str, list[dict]] = {"driver writes": [], "worker writes": []}
    for round_ in range(1, args.rounds + 1):
        for path in results:
            name = f"r{round_}-{'driver' if path == 'driver writes' else 'worker'}"
            spec = validate(job(args.rows, root, name, args.rows_per_file), base=".")
            job_dir = storage.location(root) / name
            write_job_files(job_dir, None, [run_info(spec, r, args.rows) for r in expand(spec)])
            prompts = open_prompts(spec.prompts)
            meter = Meter()
            total = (driver_writes(spec, prompts, job_dir, args.rows_per_file, meter)
                     if path == "driver writes" else worker_writes(spec, prompts, args.rows, meter))
            assert total == args.rows, (path, total)
            measured = meter.result()
            results[path].append(measured)
            print(f"round {round_}: {path:<14} " + "; ".join(
                f"{kind} {rate:6.1f} rows/s, driver {cpu:5.2f} CPU s per 1,000 rows"
                for kind, (rate, cpu) in measured.items()))
            if storage.is_local(job_dir):
                shutil.rmtree(job_dir, ignore_errors=True)
    for kind in ("whole", "steady"):
        rate = {p: statistics.median(m[kind][0] for m in v) for p, v in results.items()}
        cpu = {p: statistics.median(m[kind][1] for m in v) for p, v in results.items()}
        print(f"{kind} pass (median of rounds):")
        for path in results:
            print(f"  {path + ':':<16} {rate[path]:7.1f} rows/s, {cpu[path]:6.2f} driver CPU s "
                  "per 1,000 rows")
        print(f"  driver CPU per row, driver writes / worker writes: "
              f"{cpu['driver writes'] / cpu['worker writes']:.1f}x (target >= 10x)")
        print(f"  rows/s, worker writes / driver writes: "
              f"{rate['worker writes'] / rate['driver writes']:.2f}x (target >= 1)")
    ray.shutdown()


def memory_child(args: argparse.Namespace) -> None:
    """One `darkroom run` over a .parquet prompt source with the fake model; prints JSON."""
    import darkroom.jobs.pipeline as pipeline
    from darkroom.jobs.jobfile import validate

    original = pipeline.dataset

    def fake(*a, **k):
        return original(*a, **k, generator_class=TinyFakeGenerator)

    pipeline.dataset = fake
    data = job(1, args.memory_output, "memory", 100_000)
    data.update(prompts={"file": args.memory_child},
                generation={"width": 8, "height": 8, "batch_size": 1000},
                compute={"actors": {"min": 1, "max": 1}, "checkpoint_rows": 100_000})
    if args.memory_rows:
        data["prompts"]["limit"] = args.memory_rows
    spec = validate(data, base=".", deep=False)
    started = time.perf_counter()
    result = pipeline.run_job(spec, log=lambda _: None)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rows": result.generated, "seconds": time.perf_counter() - started}))


def memory(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(tempfile.mkdtemp(prefix="write-path-memory-"))
    peaks = {}
    for count in (1_000, 1_000_000):
        source = folder / f"prompts-{count}.parquet"
        pq.write_table(pa.table({"prompt": [f"a photograph of thing number {i}"
                                            for i in range(count)]}), source)
        command = [sys.executable, __file__, "--memory-child", str(source), "--memory-output",
                   str(folder / f"out-{count}"), "--memory-rows", str(args.memory_rows)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
        peaks[count] = json.loads(done.stdout.strip().splitlines()[-1])
        measured = peaks[count]
        print(f"{count:>9,} prompts ({measured['rows']:,} rows generated in "
              f"{measured['seconds']:.0f} s): driver peak RSS {measured['peak_rss_mb']:.0f} MB")
    grow = peaks[1_000_000]["peak_rss_mb"] - peaks[1_000]["peak_rss_mb"]
    print(f"driver peak RSS, 1,000,000 - 1,000 prompts: {grow:+.0f} MB (target within 150 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--rows-per-file", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--output", help="where both paths write (default: a temporary folder)")
    parser.add_argument("--memory-rows", type=int, default=0,
                        help="rows of each memory run (0: the whole source)")
    parser.add_argument("--skip-paths", action="store_true", help="only the memory runs")
    parser.add_argument("--skip-memory", action="store_true", help="only the write paths")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    if not args.skip_paths:
        compare_paths(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
