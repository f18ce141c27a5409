"""Step caches judged by the gate: the bundled digits DiT at 25 steps, with and without each.

    .venv/bin/python benchmarks/gate.py [--images-per-class 50] [--steps 25]

For each option it runs `darkroom gate` (both arms on the same rows, one actor each, in one
process: the baseline arm is generated once and reused) and prints the speed-up beside the change
in class accuracy and FID (digits features against the real digits), with the candidate's FID
interval where evaluation gives one, and the images' PSNR/SSIM against their uncached twins.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

OPTIONS = {
    "first_block 0.05": "runtime.cache={kind: first_block, threshold: 0.05}",
    "first_block 0.10": "runtime.cache={kind: first_block, threshold: 0.1}",
    "first_block 0.20": "runtime.cache={kind: first_block, threshold: 0.2}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default=None, help="job folder root (default: a temp folder)")
    args = parser.parse_args()

    from darkroom.jobs.gate import gate_settings, run_gate
    from darkroom.jobs.jobfile import validate

    root = Path(args.out or tempfile.mkdtemp(prefix="darkroom-gate-"))
    spec = validate({
        "name": "digits-gate", "output": str(root / "out"),
        "prompts": {"classes": list(range(10)), "images_per_prompt": args.images_per_class},
        "models": [{"model": "builtin:digits-dit"}],
        "sweep": {"sampler": ["ddim"], "steps": [args.steps], "guidance_scale": [1.5]},
        "generation": {"batch_size": 50},
        "compute": {"actors": {"min": 1, "max": 1}},
        "runtime": {"device": "cpu"},
        "eval": {"metrics": ["fid", "class_accuracy"], "feature_extractor": "digits",
                 "reference": {"dataset": "builtin:digits"}},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
        "gate": {"max_worsening": {"class_accuracy": 0.01}},
    }, base=root)
    rows = []
    for label, option in OPTIONS.items():
        options, gate = gate_settings(spec, [option], [])
        result = run_gate(spec, options, gate, log=lambda _: None)
        fid = result.metrics.get("fid", {})
        accuracy = result.metrics.get("class_accuracy", {})
        rows.append({"option": label, "speedup": result.speedup,
                     "class_accuracy": [accuracy.get("baseline"), accuracy.get("candidate")],
                     "fid": [fid.get("baseline"), fid.get("candidate")],
                     "psnr_mean": result.psnr_mean, "ssim_mean": result.ssim_mean,
                     "passed": not result.failures, "failures": result.failures})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.images_per_class * 10} images, {args.steps} steps, digits DiT, ddim, one actor")
    print("| option | speed-up | class accuracy (base -> cached) | FID (base -> cached) | "
          "PSNR dB | SSIM | gate (accuracy within 1 point) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        (a0, a1), (f0, f1) = r["class_accuracy"], r["fid"]
        print(f"| {r['option']} | {r['speedup']:.2f}x | {a0:.3f} -> {a1:.3f} | "
              f"{f0:.2f} -> {f1:.2f} | {r['psnr_mean']:.1f} | {r['ssim_mean']:.3f} | "
              f"{'passed' if r['passed'] else 'failed'} |")


if __name__ == "__main__":
    main()
