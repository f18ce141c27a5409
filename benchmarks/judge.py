"""Judge throughput (VQAScore): the scoring actors of `darkroom eval` beside a plain loop.

    .venv/bin/python benchmarks/judge.py                         # the tiny random-init Qwen2-VL
    .venv/bin/python benchmarks/judge.py --model DIR --images 512 --batch 16

Both read the same Parquet of PNG images with prompts, decode them and ask the same judge (the
`vqascore` part, loaded once) the same questions with the same batch size and one torch thread
per worker. Without `--model`, the tiny random-init Qwen2-VL of the tests stands in (the same
code path as real weights, far less compute, so fixed costs weigh more). The actor pool is timed
end to end (pool start included) and in steady state (from its first batch to its last); each
ratio is against the plain loop measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval import TimedScorer, make_parquet  # noqa: E402  (the feature benchmark's helpers)


def planned(model: str, batch: int):
    from darkroom.evals.scorers.plan import plan_parts
    from darkroom.evals.spec import EvalSpec

    spec = EvalSpec(metrics=["vqascore"], judge={"model": model, "batch_size": batch})
    plan, skipped = plan_parts(spec)
    if skipped:
        raise SystemExit(f"the judge cannot be planned: {skipped}")
    return plan


def plain_loop(paths: list[str], model: str, batch: int) -> float:
    """Seconds for read + decode + judge in this process, one torch thread."""
    import torch

    from darkroom.evals.scorers.actor import build_part
    from darkroom.platform.data.records import decode_png

    torch.set_num_threads(1)
    plan = planned(model, batch)
    part = build_part(plan.parts[0], plan.device)
    part([np.zeros((56, 56, 3), np.uint8)], {"prompt": np.array(["warm"], dtype=object)})
    start = time.perf_counter()
    for path in paths:
        table = pq.read_table(path, columns=["image", "prompt"])
        images, prompts = (table.column(c).to_pylist() for c in ("image", "prompt"))
        for i in range(0, len(images), batch):
            out = part([decode_png(b) for b in images[i:i + batch]],
                       {"prompt": np.array(prompts[i:i + batch], dtype=object)})
            assert np.isfinite(out["vqascore"]).all(), out["vqascore_error"]
    return time.perf_counter() - start


def actor_pool(paths: list[str], model: str, batch: int, actors: int) -> tuple[float, float]:
    """(end-to-end seconds, seconds from the first batch's start to the last batch's end)."""
    from darkroom.evals.scorers.actor import images_dataset, scored_dataset

    ds = scored_dataset(images_dataset(paths, ["bench"] * len(paths)), planned(model, batch),
                        actors, batch, actor=TimedScorer)
    start = time.perf_counter()
    chunks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    total = time.perf_counter() - start
    assert all(np.isfinite(c["vqascore"]).all() for c in chunks), "the judge failed on a batch"
    return total, max(c["ended"].max() for c in chunks) - min(c["started"].min() for c in chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a judge folder or hub id; default: the tiny stand-in")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=56, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1])
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=max(args.actors) + 1, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-judge-") as folder:
        paths = make_parquet(Path(folder), args.images, args.size)
        model = args.model
        if model is None:
            from darkroom.platform.builders.tiny_vlm import tiny_vlm

            model = str(tiny_vlm(Path(folder) / "tiny-vlm"))
        base = args.images / plain_loop(paths, model, args.batch)
        rows = [("plain loop, 1 process", base, base)]
        for actors in args.actors:
            total, steady = actor_pool(paths, model, args.batch, actors)
            rows.append((f"Ray Data, {actors} actor(s)", args.images / total,
                         args.images / steady))
    ray.shutdown()

    stand_in = " (tiny random-init stand-in)" if args.model is None else ""
    print(f"judge={args.model or 'tiny-qwen2-vl'}{stand_in} metric=vqascore images={args.images} "
          f"size={args.size}px batch={args.batch} cpus={os.cpu_count()}")
    print(f"{'mode':<24}{'images/s':>10}{'ratio':>8}{'steady images/s':>17}{'ratio':>8}")
    for name, rate, steady in rows:
        print(f"{name:<24}{rate:>10.1f}{rate / base:>8.2f}{steady:>17.1f}{steady / base:>8.2f}")


if __name__ == "__main__":
    main()
