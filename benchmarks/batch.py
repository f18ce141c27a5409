"""Batch jobs on Ray Data beside a hand-written diffusers loop, in one process run.

    .venv/bin/python benchmarks/batch.py                      # tiny:sd, 128 prompts, batch 8
    .venv/bin/python benchmarks/batch.py --model builtin:digits-ldm --steps 25 --size 0

Prints, for the same model, prompts, seeds and batch size:
  1. steady-state images/s of a hand-written loop (pipeline call + PNG encoding, one torch
     thread: what one CPU actor gets);
  2. steady-state images/s of the same job through `darkroom.jobs.pipeline` on one actor, and
     its ratio to the loop (rounds of both, side by side, median);
  3. the whole job's wall time from a cold `darkroom run` process (imports, Ray start-up, actor
     start-up, generation, Parquet) beside its generation time at the steady rate;
  4. the scaling from one to two actors (one torch thread each).
Steady state for a job is read from the rows' `created_at` (when each batch finished on its
actor): the images after each actor's first batch over the time they took, so start-up is left
out and the idle time between batches is in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def job_data(args: argparse.Namespace, root: Path, name: str, actors: int) -> dict:
    return {
        "name": name,
        "seed": 0,
        "output": str(root / "out"),
        "prompts": {"file": "prompts.txt"},
        "models": [{"name": "bench", "model": args.model}],
        "sweep": {"sampler": [args.sampler], "steps": [args.steps],
                  "guidance_scale": [args.guidance]},
        "generation": {"width": args.size or None, "height": args.size or None,
                       "batch_size": args.batch_size},
        "compute": {"actors": {"min": actors, "max": actors}, "cpus_per_actor": 1},
        "runtime": {"device": "cpu", "torch_threads": 1},
    }


def load_pipeline(args: argparse.Namespace):
    """The model as a plain diffusers pipeline with the sampler's scheduler."""
    import diffusers

    from darkroom.platform.models.loading import infer_family
    from darkroom.platform.models.names import resolve_source
    from darkroom.platform.models.spec import ModelSpec
    from darkroom.platform.quiet import quiet_libraries
    from darkroom.platform.samplers import SAMPLERS

    quiet_libraries()
    source, local = resolve_source(args.model)
    if args.model.startswith("tiny:"):
        from darkroom.platform.models.builds import tiny_folder

        source = str(tiny_folder(args.model.split(":", 1)[1]))
    family = infer_family(ModelSpec(model=args.model))
    pipe = getattr(diffusers, family.pipeline).from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    sampler = SAMPLERS[args.sampler]
    pipe.scheduler = getattr(diffusers, sampler.scheduler).from_config(
        pipe.scheduler.config, **sampler.overrides)
    return pipe


def hand_written_loop(args: argparse.Namespace, pipe, prompts: list[str],
                      seeds: list[int]) -> float:
    """Steady-state images/s of a plain diffusers loop: the same calls, without Ray or Darkroom."""
    import torch

    from darkroom.platform.data.records import encode_png, to_uint8

    torch.set_num_threads(1)  # what each CPU actor gets
    size = {"width": args.size, "height": args.size} if args.size else {}
    started, count = None, 0
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i: i + args.batch_size]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[i: i + len(batch)]]
        with torch.inference_mode():
            images = pipe(prompt=batch, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, generator=generators, output_type="np",
                          **size).images
        pngs = [encode_png(to_uint8(image)) for image in images]
        assert len(pngs) == len(batch)
        if started is None:  # the first batch warms up; time the rest
            started = time.perf_counter()
        else:
            count += len(batch)
    return count / (time.perf_counter() - started)


def steady_rate(job_dir: Path, actors: int) -> float:
    """Images/s of a finished job read from its rows: after each actor's first batch."""
    from darkroom.platform.data import layout

    table = layout.read_table(layout.run_dirs(job_dir)[0] / layout.IMAGES,
                              columns=["created_at"])
    # the rows of a batch share its finishing instant; each actor's first batch carries its
    # start-up, so the clock starts when the last of them is done
    finished, rows = np.unique(table.column("created_at").to_numpy().astype("int64") / 1e6,
                               return_counts=True)
    start = finished[actors - 1]
    return rows[actors:].sum() / (finished[-1] - start)


def run_in_process(spec_data: dict, root: Path) -> tuple[float, float]:
    """Run a job through the pipeline in this process (Ray already up); returns (wall s, rate)."""
    from darkroom.jobs.jobfile import validate
    from darkroom.jobs.pipeline import run_job

    spec = validate(spec_data, base=root)
    started = time.perf_counter()
    run_job(spec, log=lambda line: None)
    wall = time.perf_counter() - started
    return wall, steady_rate(root / "out" / spec.name, spec.compute.actors.max)


def cold_job(spec_data: dict, root: Path) -> tuple[float, str]:
    """A whole `darkroom run` in a fresh process: imports, local Ray, actors, Parquet."""
    path = root / f"{spec_data['name']}.yaml"
    path.write_text(json.dumps(spec_data))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "darkroom", "run", str(path)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"darkroom run failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="0: the model's native size")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    os.environ.setdefault("DARKROOM_CACHE", str(root / "cache"))
    prompts = [f"prompt number {i}" for i in range(args.prompts)]
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")

    from darkroom.jobs.plan import row_seed
    if args.model.startswith("tiny:"):  # build its folder once, outside every timing
        from darkroom.platform.models.builds import tiny_folder

        tiny_folder(args.model.split(":", 1)[1])
    seeds = [row_seed(0, f"{i:05d}", 0) for i in range(args.prompts)]
    print(f"model {args.model}, {args.prompts} prompts, batch {args.batch_size}, "
          f"{args.steps} steps, {os.cpu_count()} CPUs")

    # a cold whole job first, while nothing else of ours is running
    cold_wall, cold_out = cold_job(job_data(args, root, "cold", 1), root)

    import ray

    pipe = load_pipeline(args)
    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - started
    # rounds of loop / 1 actor / 2 actors side by side: a shared machine's load drifts, so each
    # ratio compares measurements taken moments apart, and the median ratio is reported
    rounds = []
    for r in range(args.rounds):
        loop = hand_written_loop(args, pipe, prompts, seeds)
        wall1, job1 = run_in_process(job_data(args, root, f"round{r}-actors1", 1), root)
        wall2, job2 = run_in_process(job_data(args, root, f"round{r}-actors2", 2), root)
        rounds.append((loop, job1, job2, wall1, wall2))
        print(f"round {r + 1}: loop {loop:6.2f}, 1 actor {job1:6.2f}, 2 actors {job2:6.2f} "
              f"images/s; job on a running Ray {wall1:.1f} s (1 actor), {wall2:.1f} s (2)")
    ray.shutdown()

    median = statistics.median
    loop, job1, job2 = (median(r[i] for r in rounds) for i in range(3))
    ratio = median(r[1] / r[0] for r in rounds)
    scaling = median(r[2] / r[1] for r in rounds)
    print(f"hand-written diffusers loop:   {loop:7.2f} images/s  steady state (median)")
    print(f"darkroom job, 1 actor:         {job1:7.2f} images/s  steady state (median)")
    print(f"ratio job / loop:              {ratio:7.3f}  (median of rounds; target >= 0.9)")
    print(f"darkroom job, 2 actors:        {job2:7.2f} images/s  steady state (median)")
    print(f"scaling 1 -> 2 actors:         {scaling:7.2f}x (median of rounds)")
    print(f"whole job, cold `darkroom run`: {cold_wall:6.1f} s for {args.prompts} images; "
          f"generation alone ~{args.prompts / job1:.1f} s at the steady rate")
    summary = [line for line in cold_out.splitlines() if "generated" in line]
    print(f"  the cold run's own summary: {summary[-1] if summary else '?'}")
    print(f"  ray.init (local, no dashboard) in this process: {ray_init:.1f} s")


if __name__ == "__main__":
    main()
