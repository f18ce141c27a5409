"""How wide a metric's 95% interval is for a given number of images, on an evaluated job.

    .venv/bin/python benchmarks/ci_width.py outputs/quickstart      # after `make demo`

For each model of the job it takes the run at guidance 1.5 and the run at guidance 4.0 with the
same sampler and steps (DDIM, 25 steps by default), keeps the first k images of every prompt
(k x 50 prompts = 50, 100, 200, 500 images) and prints, per number of images, the half-width of
each metric's interval and of the paired difference between the two runs (the smallest
difference that number of images can tell apart), with the same code `darkroom eval` and
`darkroom compare --baseline` run: features from the runs' caches, resampled by prompt. It then
times one bootstrap resample of FID on random features of 64 and 2048 dimensions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ["fid", "kid", "precision", "recall", "class_accuracy"]


def _runs(job_dir: Path, sampler: str, steps: int) -> dict[str, dict[float, Path]]:
    """model label -> guidance -> run folder, for the given sampler and steps."""
    from darkroom.platform.data import layout

    found: dict[str, dict[float, Path]] = {}
    for run_dir in layout.run_dirs(job_dir):
        info = layout.read_json(run_dir / layout.RUN_INFO)
        if info["sampler"]["name"] == sampler and info["steps"] == steps:
            found.setdefault(info["model_label"], {})[info["guidance_scale"]] = run_dir
    return found


def _first(data, per_prompt: int):
    """The run with only the first `per_prompt` images of each prompt."""
    from dataclasses import replace

    rows = np.flatnonzero(np.asarray(data.scores.columns["sample_idx"], dtype=int) < per_prompt)
    return replace(data, scores=data.scores.take(rows))


def widths(low_dir: Path, high_dir: Path, per_prompt: int, resamples: int) -> dict[str, tuple]:
    """metric -> (half-width of the run at guidance 1.5, of the paired difference to 4.0)."""
    from darkroom.evals.metrics.base import Context
    from darkroom.evals.metrics.compute import statistics, with_intervals
    from darkroom.evals.reporting.paired import compare_runs, load_run

    low, high = (_first(load_run(d.name, d), per_prompt) for d in (low_dir, high_dir))
    stats, _ = statistics(low.scores, Context(low.spec, low.references), METRICS)
    counts = low.scores.counts(resamples, 0)
    values = with_intervals(stats, counts, 0.95)
    paired = compare_runs(high, low, METRICS, resamples, 0, 0.95).differences
    out = {}
    for key in METRICS:
        single = (values.get(f"{key}_ci_high", np.nan) - values.get(f"{key}_ci_low", np.nan)) / 2
        diff = paired.get(key)
        out[key] = (values.get(key, np.nan), single,
                    diff.delta if diff else np.nan,
                    (diff.interval.high - diff.interval.low) / 2 if diff and diff.interval
                    else np.nan)
    return out


def resample_seconds(dims: int, images: int = 1000, repeats: int = 5) -> float:
    """Seconds one bootstrap resample of FID takes on random features."""
    from darkroom.evals.metrics.bootstrap import resample_counts
    from darkroom.evals.metrics.distances import Frechet, Stats

    rng = np.random.default_rng(0)
    frechet = Frechet(rng.normal(size=(images, dims)), Stats.of(rng.normal(size=(images, dims))))
    counts = resample_counts(np.arange(images), repeats, 0)
    start = time.perf_counter()
    frechet(counts)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_dir", type=Path, help="an evaluated job folder (OUTPUT/<job>)")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--resamples", type=int, default=500)
    args = parser.parse_args()
    for model, runs in sorted(_runs(args.job_dir, args.sampler, args.steps).items()):
        if 1.5 not in runs or 4.0 not in runs:
            continue
        print(f"\n{model}, {args.sampler} {args.steps} steps: guidance 1.5 (value ± half-width) "
              "and the paired difference to guidance 4.0 (delta ± half-width)")
        print("| images | " + " | ".join(METRICS) + " | "
              + " | ".join(f"Δ{m}" for m in METRICS) + " |")
        print("|---" * (1 + 2 * len(METRICS)) + "|")
        for per_prompt in (1, 2, 4, 10):
            found = widths(runs[1.5], runs[4.0], per_prompt, args.resamples)
            cells = [f"{found[m][0]:.3g} ± {found[m][1]:.2g}" for m in METRICS]
            cells += [f"{found[m][2]:+.3g} ± {found[m][3]:.2g}" for m in METRICS]
            print(f"| {50 * per_prompt} | " + " | ".join(cells) + " |")
    print("\nseconds per bootstrap resample of FID (1000 images, this machine):")
    for dims in (64, 2048):
        print(f"  {dims}-d features: {resample_seconds(dims):.4f} s")


if __name__ == "__main__":
    main()
