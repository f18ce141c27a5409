"""Train the bundled digits models from scratch, offline, on one CPU thread.

    python -m darkroom.platform.zoo.train_digits --out darkroom/platform/zoo/weights
    darkroom zoo train-digits [--out DIR] [--quick]

Four artifacts, all trained on the "train" split of sklearn's digits (16x16 RGB):
1. digits-classifier: the judge (class accuracy) and FID feature extractor;
2. a small AutoencoderKL (16x16x3 <-> 4x8x8), saved inside both pipelines;
3. digits-dit: DiTPipeline (Peebles & Xie 2023), class labels;
4. digits-ldm: StableDiffusionPipeline (Rombach et al. 2022), prompts.
Both use classifier-free guidance (Ho & Salimans 2022). Then every model is evaluated: held-out
accuracy of the classifier, and class accuracy / FID of 200 generated images per pipeline (DDIM,
25 steps) at the default guidance and at guidance 1. Stats land in `training_report.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAGES = ("classifier", "vae", "dit", "ldm", "eval")
# (full, quick) settings; full takes ~30 min on one thread of these 2-core machines.
SETTINGS = {
    "classifier_epochs": (30, 1),
    "classifier_max_steps": (None, 3),
    "vae_steps": (800, 3),
    "dit_steps": (5000, 3),
    "ldm_steps": (4000, 3),
    "eval_n": (200, 10),
    "eval_steps": (25, 2),
    "eval_guidance": ((1.0, 1.5, 2.0, 3.0, 4.0, 6.0), (1.0,)),
}
REPORT = "training_report.json"


def _log(message: str) -> None:
    print(message, flush=True)


def _save_pipeline(pipe, folder: Path, darkroom_json: dict[str, Any]) -> None:
    from darkroom.platform.zoo.evaluate import DARKROOM_JSON

    pipe.save_pretrained(folder, safe_serialization=True)
    # a component loaded from disk (the VAE when its stage is skipped) remembers where it came
    # from; that path means nothing in the saved folder
    for config_file in folder.glob("*/config.json"):
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / DARKROOM_JSON).write_text(json.dumps(darkroom_json, indent=2) + "\n")


def main(out_dir: str | Path, quick: bool = False, stages: Sequence[str] = STAGES,
         seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Train (and evaluate) the `stages` into `out_dir`; returns the report, also saved there.

    Stages not run are loaded from `out_dir`. Retraining the VAE changes the latent space, so it
    must be followed by both pipelines. `overrides` replace entries of SETTINGS (`dit_steps=...`).
    """
    import torch

    torch.set_num_threads(1)  # two threads measured up to 7x slower on these machines
    from diffusers import AutoencoderKL

    from darkroom.platform.zoo import dit, ldm
    from darkroom.platform.zoo.classifier import CLASSIFIER_NAME, train_classifier
    from darkroom.platform.zoo.vae import train_vae

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if "vae" in stages and not {"dit", "ldm"} <= set(stages):
        raise ValueError("retraining the vae changes the latents: also run the dit and ldm stages")
    settings = {k: v[1] if quick else v[0] for k, v in SETTINGS.items()}
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {', '.join(settings)}")
    settings.update(overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update({"quick": quick, "seed": seed, "settings": settings,
                   "torch": torch.__version__})
    start = time.perf_counter()
    timings: dict[str, dict[str, float]] = report.setdefault("timings", {})

    def save_report() -> None:
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        """Wall and CPU minutes of a stage: on a shared machine the wall time depends on the
        load; the CPU time (one thread) is what the stage itself costs."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        timings[name] = {"wall_minutes": (time.perf_counter() - wall) / 60,
                         "cpu_minutes": (time.process_time() - cpu) / 60,
                         "load_average_1min": os.getloadavg()[0]}
        _log(f"[{name}] {timings[name]}")
        save_report()

    # 1. the classifier: judge and feature extractor
    if "classifier" in stages:
        with timed("classifier"):
            model, report["classifier"] = train_classifier(
                epochs=settings["classifier_epochs"], max_steps=settings["classifier_max_steps"],
                seed=seed, log=_log)
            model.save(out / CLASSIFIER_NAME)

    # 2. the shared VAE
    if "vae" in stages:
        with timed("vae"):
            vae, report["vae"] = train_vae(steps=settings["vae_steps"], seed=seed, log=_log)
    else:
        vae = AutoencoderKL.from_pretrained(out / "digits-dit" / "vae")

    # 3. the DiT
    if "dit" in stages:
        with timed("dit"):
            pipe, report["dit"] = dit.train_dit(vae, steps=settings["dit_steps"], seed=seed,
                                                log=_log)
            _save_pipeline(pipe, out / "digits-dit", dit.DARKROOM_JSON)

    # 4. the LDM
    if "ldm" in stages:
        with timed("ldm"):
            pipe, report["ldm"] = ldm.train_ldm(vae, steps=settings["ldm_steps"], seed=seed,
                                                log=_log)
            _save_pipeline(pipe, out / "digits-ldm", ldm.DARKROOM_JSON)

    # 5. evaluation, from the saved folders exactly as users load them
    if "eval" in stages:
        with timed("eval"):
            report["eval"] = evaluate_all(out, settings, report, seed)
    report["seconds_this_run"] = time.perf_counter() - start
    save_report()
    _log(json.dumps(report.get("eval", {}), indent=2))
    _log(f"done in {report['seconds_this_run'] / 60:.1f} min; report: {report_path}")
    return report


def evaluate_all(out: Path, settings: dict[str, Any], report: dict[str, Any],
                 seed: int = 0) -> dict[str, Any]:
    """Class accuracy and FID of both pipelines, loaded from `out` exactly as users load them,
    over a few guidance scales (always including the default and 1)."""
    from diffusers import DiffusionPipeline

    from darkroom.platform.zoo import dit, ldm
    from darkroom.platform.zoo.classifier import CLASSIFIER_NAME, load_digits_classifier
    from darkroom.platform.zoo.evaluate import evaluate_pipeline, real_fid_floor

    classifier = load_digits_classifier(out / CLASSIFIER_NAME)
    evaluation: dict[str, Any] = {
        "classifier_test_accuracy": report.get("classifier", {}).get("test_accuracy"),
        "fid_real_train_vs_test": real_fid_floor(classifier, n=settings["eval_n"], seed=seed),
    }
    for name, meta in (("digits-dit", dit.DARKROOM_JSON), ("digits-ldm", ldm.DARKROOM_JSON)):
        pipe = DiffusionPipeline.from_pretrained(out / name)
        for guidance in sorted({meta["default_guidance_scale"], *settings["eval_guidance"]}):
            t0 = time.perf_counter()
            result = evaluate_pipeline(pipe, classifier, guidance, n=settings["eval_n"],
                                       steps=settings["eval_steps"], seed=seed)
            result["seconds"] = time.perf_counter() - t0
            evaluation[f"{name}@guidance{guidance:g}"] = result
            _log(f"[eval] {name} ddim {settings['eval_steps']} steps guidance {guidance:g}: "
                 f"class accuracy {result['class_accuracy']:.3f} "
                 f"FID(64-d) {result['fid_vs_test']:.2f} ({result['seconds']:.0f}s)")
    return evaluation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the train-digits options (--out, --quick, --stages, --seed, step overrides)."""
    from darkroom.platform.zoo import WEIGHTS_ROOT

    parser.add_argument("--out", default=str(WEIGHTS_ROOT),
                        help="output folder (default: the bundled weights folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per stage: checks the code path in well under a minute")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)}; the rest is loaded")
    parser.add_argument("--seed", type=int, default=0)
    for name in ("vae_steps", "dit_steps", "ldm_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"override {name} ({SETTINGS[name][0]} by default)")


def run(args: argparse.Namespace) -> int:
    """Run `main` with the parsed options; the exit code: 0, or 2 on a ValueError (printed)."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    try:
        overrides = {k: getattr(args, k) for k in ("vae_steps", "dit_steps", "ldm_steps")
                     if getattr(args, k, None) is not None}
        main(args.out, quick=args.quick, stages=stages, seed=args.seed, **overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
