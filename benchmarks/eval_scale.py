"""Seconds and peak memory of the resampled corpus metrics at benchmark scale.

    .venv/bin/python benchmarks/eval_scale.py                       # 2,000 / 10,000 / 30,000
    .venv/bin/python benchmarks/eval_scale.py --images 2000 --resamples 20

Random 2048-d features (as Inception's) for the generated and the reference images, resampled
as `darkroom eval` does (multinomial counts, `--resamples` of them): the FID (`Frechet`) and
KID's MMD (`MMD`) of today's code, timed beside the former numpy FID loop (one d x d
eigendecomposition and an n x d^2 product a resample) where `--old-up-to` allows. Peak memory
is the process's resident high-water mark (ru_maxrss), so it only grows from line to line. The
k-NN statistics (precision, recall, density, coverage) are not timed: they still hold n x n
matrices. Prints the machine's load first; the last line is `N images: S s, P GB` for the
largest N, summed over the metrics timed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def former_frechet(x: np.ndarray, mu_r: np.ndarray, sigma_r: np.ndarray, counts: np.ndarray):
    """The numpy FID loop the resampled FID replaced: one d x d eigendecomposition a resample."""
    from darkroom.evals.metrics.distances import _sym_sqrt

    root = _sym_sqrt(sigma_r)
    z_all = x @ root
    out = []
    for c in counts.astype(np.float64):
        total = c.sum()
        mu = c @ x / total
        trace = float(c @ ((x - mu) ** 2).sum(axis=1)) / (total - 1)
        z = z_all - mu @ root
        middle = (z.T * c) @ z / (total - 1)
        root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum()
        out.append(((mu - mu_r) ** 2).sum() + trace + np.trace(sigma_r) - 2 * root_trace)
    return np.array(out)


def resampled(metric, *args) -> np.ndarray:
    """Build the resampled metric and run it on the counts (the last argument): both timed."""
    return metric(*args[:-1])(args[-1])


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, np.asarray(out)


def main() -> None:
    from darkroom.evals.metrics.distances import MMD, Frechet, Stats, polynomial_kernel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 10000, 30000])
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--old-up-to", type=int, default=10000,
                        help="time the former FID loop up to this many images")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()} on {os.cpu_count()} CPUs; {args.resamples} resamples, "
          f"{args.dims}-d features")
    rng = np.random.default_rng(0)
    last = ""
    for n in args.images:
        x = rng.normal(size=(n, args.dims)).astype(np.float64)
        y = rng.normal(size=(n, args.dims)).astype(np.float64)
        ref = Stats.of(y)
        counts = rng.multinomial(n, np.full(n, 1 / n), size=args.resamples)
        total = 0.0
        seconds, new = timed(resampled, Frechet, x, ref, counts)
        total += seconds
        print(f"{n} images: fid   {seconds:8.1f} s  peak {peak_gb():5.2f} GB")
        if n <= args.old_up_to:
            old_seconds, old = timed(former_frechet, x, ref.mu, ref.sigma, counts)
            gap = float(np.max(np.abs(new - old) / np.abs(old)))
            print(f"{n} images: fid (former numpy loop) {old_seconds:8.1f} s  peak "
                  f"{peak_gb():5.2f} GB  largest relative difference {gap:.1e}")
        seconds, _ = timed(resampled, MMD, x, y, polynomial_kernel, 1024, False, counts)
        total += seconds
        print(f"{n} images: kid   {seconds:8.1f} s  peak {peak_gb():5.2f} GB")
        last = f"{n} images: {total:.0f} s, {peak_gb():.1f} GB"
    print(last)


if __name__ == "__main__":
    main()
