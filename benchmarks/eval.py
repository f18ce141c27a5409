"""Feature extraction for FID/KID: the Ray Data actor pool of `darkroom eval` beside a plain loop.

    .venv/bin/python benchmarks/eval.py                          # Inception compute, 96 images
    .venv/bin/python benchmarks/eval.py --weights DIR            # the real Inception weights
    .venv/bin/python benchmarks/eval.py --extractor tiny --images 4096

Both read the same Parquet of PNG images, decode them and run the same extractor (clean-fid's
resize to 299 and Inception-v3 by default) with the same batch size and one torch thread per
worker. Without `--weights`, a random-weight Inception-v3 (torchvision's, traced into the file
the `inception` extractor loads) stands in: the same compute, nothing to download. The actor pool
is timed end to end (pool start included) and in steady state (from its first batch to its
last); each ratio is against the plain loop measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_parquet(folder: Path, count: int, size: int, files: int = 8) -> list[str]:
    from darkroom.platform.data.records import encode_png

    rng = np.random.default_rng(0)
    paths = []
    per_file = -(-count // files)
    for f in range(files):
        n = min(per_file, count - f * per_file)
        if n <= 0:
            break
        rows = {"row_id": [f"{f:02d}-{i:05d}" for i in range(n)],
                "image": [encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                          for _ in range(n)],
                "prompt": ["a benchmark image"] * n,
                "class_label": pa.array([None] * n, pa.int64())}
        path = folder / f"part-{f}.parquet"
        pq.write_table(pa.table(rows), path)
        paths.append(str(path))
    return paths


def random_inception(folder: Path) -> str:
    """A random-weight Inception-v3 up to pool3, saved where the `inception` extractor looks."""
    import torch
    import torchvision

    from darkroom.evals.scorers.inception import INCEPTION_FILE

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    layers = torch.nn.Sequential(*[m for name, m in net.named_children()
                                   if name not in ("dropout", "fc")], torch.nn.Flatten())

    class Pool3(torch.nn.Module):  # clean-fid calls `.layers` of the TorchScript file
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    traced = torch.jit.trace(Pool3().eval(), torch.rand(1, 3, 299, 299))
    traced.save(str(folder / INCEPTION_FILE))
    return str(folder)


def plain_loop(paths: list[str], extractor: str, weights: str | None, batch: int) -> float:
    """Seconds for read + decode + extract in this process, one torch thread."""
    import torch

    from darkroom.evals.scorers.features import load_extractor
    from darkroom.platform.data.records import decode_png

    torch.set_num_threads(1)
    model = load_extractor(extractor, weights)
    model([np.zeros((32, 32, 3), np.uint8)])  # warm up, as an actor is warm after __init__
    start = time.perf_counter()
    count = 0
    for path in paths:
        images = pq.read_table(path, columns=["image"]).column("image").to_pylist()
        for i in range(0, len(images), batch):
            count += len(model([decode_png(b) for b in images[i:i + batch]]))
    return time.perf_counter() - start


class TimedScorer:
    """A Scorer that also returns when each batch started and ended on its actor."""

    def __init__(self, plan: dict) -> None:
        from darkroom.evals.scorers.actor import ScoringActor as Scorer

        self.scorer = Scorer(plan)

    def __call__(self, batch: dict) -> dict:
        start = time.time()
        out = self.scorer(batch)
        count = len(out["row_id"])
        out["started"], out["ended"] = np.full(count, start), np.full(count, time.time())
        return out


def actor_pool(paths: list[str], extractor: str, weights: str | None, batch: int,
               actors: int) -> tuple[float, float]:
    """(end-to-end seconds, seconds from the first batch's start to the last batch's end)."""
    from darkroom.evals.scorers.actor import images_dataset, scored_dataset
    from darkroom.evals.scorers.plan import ScorePlan

    plan = ScorePlan.of_features({extractor: weights})
    ds = scored_dataset(images_dataset(paths, ["bench"] * len(paths)), plan, actors, batch,
                        actor=TimedScorer)
    start = time.perf_counter()
    chunks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    total = time.perf_counter() - start
    started = min(c["started"].min() for c in chunks)
    ended = max(c["ended"].max() for c in chunks)
    return total, ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractor", default="inception")
    parser.add_argument("--weights", help="default for inception: a random-weight stand-in")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=max(args.actors) + 1, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-eval-") as folder:
        paths = make_parquet(Path(folder), args.images, args.size)
        weights = args.weights
        if args.extractor == "inception" and weights is None:
            weights = random_inception(Path(folder))
        base = args.images / plain_loop(paths, args.extractor, weights, args.batch)
        rows = [("plain loop, 1 process", base, base)]
        for actors in args.actors:
            total, steady = actor_pool(paths, args.extractor, weights, args.batch, actors)
            rows.append((f"Ray Data, {actors} actor(s)", args.images / total,
                         args.images / steady))
    ray.shutdown()

    stand_in = " (random-weight stand-in)" if weights != args.weights else ""
    print(f"extractor={args.extractor}{stand_in} images={args.images} size={args.size}px "
          f"batch={args.batch} cpus={os.cpu_count()}")
    print(f"{'mode':<24}{'images/s':>10}{'ratio':>8}{'steady images/s':>17}{'ratio':>8}")
    for name, rate, steady in rows:
        print(f"{name:<24}{rate:>10.1f}{rate / base:>8.2f}{steady:>17.1f}{steady / base:>8.2f}")


if __name__ == "__main__":
    main()
