"""Do the intervals hold what a new seed does? The digits DiT at one setting under several job
seeds, in one process.

    .venv/bin/python benchmarks/seed_calibration.py --seeds 8 --per-prompt 4

Generates the 50 digits prompts x `per-prompt` images with `builtin:digits-dit` (DDIM, 10 steps,
guidance 1.5) once per job seed (row seeds as `darkroom run` derives them), scores each set as
`darkroom eval` does (digits features against builtin:digits, bootstrap by prompt within digit)
and prints, per metric: the spread of the value across seeds (its standard deviation), the spread
each run's interval claims (half-width / 1.96, averaged), and how many of the seed-vs-seed
comparisons (unpaired: other seeds) come out *better* or *worse* — about 5% if the intervals are
right, since every seed draws from the same model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METRICS = ["fid", "kid", "precision", "recall", "class_accuracy"]


def generate(seed: int, per_prompt: int, steps: int, guidance: float):
    """(images, rows) of one job seed."""
    from darkroom.jobs.plan import row_seed
    from darkroom.platform.data.records import decode_png
    from darkroom.platform.engine.generator import ImageGenerator

    prompts = [json.loads(line) for line in
               (ROOT / "configs/jobs/prompts/digits.jsonl").read_text().splitlines() if line]
    rows = [{"row_id": f"{p['id']}/{k}", "prompt_id": p["id"], "sample_idx": k,
             "seed": row_seed(seed, p["id"], k), "prompt": p["prompt"],
             "class_label": str(p["class_label"]), "guidance_scale": guidance}
            for p in prompts for k in range(per_prompt)]
    generator = ImageGenerator({"model": "builtin:digits-dit"}, {"name": "ddim"},
                          defaults={"steps": steps})
    out = generator.generate(rows)
    return [decode_png(r["image"]) for r in out], rows


def main() -> None:
    import torch

    from darkroom.evals.metrics.base import Context, RunScores
    from darkroom.evals.metrics.bootstrap import BETTER, WORSE, difference
    from darkroom.evals.metrics.compute import higher_is_better, statistics, with_intervals
    from darkroom.evals.metrics.distances import Stats
    from darkroom.evals.scorers.classifier import CLASSIFIERS
    from darkroom.evals.scorers.features import load_extractor
    from darkroom.evals.spec import EvalSpec
    from darkroom.platform.zoo.data import digits_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--resamples", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    extractor = load_extractor("digits")
    classifier = CLASSIFIERS["digits"].load(None)
    real, _ = digits_dataset("all")
    spec = EvalSpec(metrics=METRICS, feature_extractor="digits",
                    reference={"dataset": "builtin:digits"},
                    bootstrap={"resamples": args.resamples})
    ctx_refs = {"digits": Stats.of(extractor(list(real)))}
    runs = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        images, rows = generate(seed, args.per_prompt, args.steps, args.guidance)
        with torch.no_grad():
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
            predicted = classifier.predict(batch).numpy()
        columns = {name: np.array([r[name] for r in rows], dtype=object)
                   for name in ("row_id", "prompt_id", "prompt", "class_label")}
        columns["features.digits"] = extractor(images).astype(np.float64)
        columns["predicted_label"] = predicted
        scores = RunScores(f"seed{seed}", columns)
        stats, _ = statistics(scores, Context(spec, ctx_refs), METRICS)
        runs.append((scores, stats, with_intervals(stats, scores.counts(args.resamples, seed),
                                                   0.95)))
    seconds = time.perf_counter() - start
    print(f"digits-dit, ddim {args.steps} steps, guidance {args.guidance}: {args.seeds} job seeds "
          f"x {50 * args.per_prompt} images, {args.resamples} resamples ({seconds:.0f} s)")
    print("| metric | mean value | sd across seeds | interval's sd (half-width / 1.96) | "
          "seed pairs called different |")
    print("|---|---|---|---|---|")
    for key in METRICS:
        values = np.array([r[2][key] for r in runs])
        claimed = np.mean([(r[2][key + "_ci_high"] - r[2][key + "_ci_low"]) / 2 / 1.96
                           for r in runs])
        called, pairs = 0, 0
        for (a, sa, _), (b, sb, _) in itertools.combinations(runs, 2):
            d = difference(sa[key].value, sb[key].value,
                           sa[key].resample(a.counts(args.resamples, 1)),
                           sb[key].resample(b.counts(args.resamples, 2)),
                           higher_is_better(key), paired=False,
                           shift=sa[key].drifts or sb[key].drifts)
            called += d.verdict in (BETTER, WORSE)
            pairs += 1
        print(f"| {key} | {values.mean():.4g} | {values.std(ddof=1):.3g} | {claimed:.3g} | "
              f"{called} of {pairs} |")


if __name__ == "__main__":
    main()
