"""`darkroom eval` and `darkroom compare`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from darkroom.evals import registry
from darkroom.evals.outputs import read_job_file
from darkroom.evals.units import FEATURES, Part, Setting
from darkroom.platform.data import layout, storage
from darkroom.platform.errors import UserError


def register(subparsers) -> None:
    """Add `eval` and `compare` to the `darkroom` command."""
    p = subparsers.add_parser(
        "eval", help="score existing output and log it to MLflow",
        description="Evaluate a job folder (OUTPUT/<job>) or one run folder in it. Settings "
        "start from the eval: section of the folder's job.yaml; flags override them.",
    )
    p.add_argument("output_dir", help="a job folder (OUTPUT/<job>) or a run folder in it; a "
                   "path or a URI (s3://bucket/outputs/job)")
    p.add_argument("--metrics", help=f"comma-separated: {','.join(registry.metrics())}")
    on_features = [m.name for m in registry.metrics().values() if m.part == Part(FEATURES)]
    p.add_argument("--feature-extractor", help=f"for {', '.join(on_features)}: "
                   f"{', '.join(registry.extractors())}")
    p.add_argument("--reference", help="builtin:NAME, a folder of images, a .parquet, or a .npz")
    p.add_argument("--weights", help="the feature extractor's weights (file or folder)")
    for setting in _flags():
        p.add_argument(f"--{setting.field.replace('_', '-')}", help=setting.description)
    p.add_argument("--backend", choices=["cleanfid", "torchmetrics"], help="FID/KID math")
    p.add_argument("--safety-threshold", type=float, help="flag at or above this NSFW score")
    p.add_argument("--resamples", type=int,
                   help="bootstrap resamples for the intervals (0: none; default 500)")
    p.add_argument("--runs", help="comma-separated run ids (default: all runs)")
    p.add_argument("--experiment", help="MLflow experiment (default: the job name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run_eval)

    c = subparsers.add_parser(
        "compare", help="rank an experiment's runs, with intervals; against a baseline; HTML",
        description="Print an experiment's runs ranked by a metric, each value with ± half its "
        "95% interval; --baseline adds every run's difference to one run with its interval and "
        "a verdict; --html also writes a report (contact sheets, quality vs speed with the "
        "Pareto front, metric vs steps) and logs it to MLflow.",
    )
    c.add_argument("--experiment", required=True, help="MLflow experiment (the job name)")
    c.add_argument("--metric", help="rank by this metric (default: fid, else the first present)")
    c.add_argument("--html", help="write the HTML report here")
    c.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's)")
    c.add_argument("--baseline", metavar="RUN",
                   help="compare every run with this one (a run name, MLflow run id or Darkroom "
                   "run id): difference, 95%% interval, better/worse/no detectable difference")
    c.add_argument("--correction", default="bh", metavar="bh|holm|none",
                   help="how --baseline's verdicts are corrected for their number: bh keeps the "
                   "false-discovery rate over the whole table at 5%% (Benjamini-Hochberg, the "
                   "default), holm the chance of any false verdict (Holm), none tests each at "
                   "5%%")
    c.add_argument("--real-baseline", metavar="COUNT", nargs="?", const="auto",
                   help="also score COUNT real images (default: the runs' image count) from the "
                   "runs' own reference against its other images, with the same features: the "
                   "floor a run of that size is measured against")
    c.add_argument("--format", dest="output", default="table",
                   choices=("table", "markdown", "csv", "json"),
                   help="table (fits 120 columns, wrapped), markdown, csv or json")
    c.set_defaults(handler=run_compare)


def reference_from_arg(value: str) -> dict[str, str]:
    """`--reference` as a ReferenceSpec dict, by what the value names."""
    if value.startswith("builtin:"):
        return {"dataset": value}
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"--reference: `{value}` does not exist; give builtin:digits, a folder "
                        "of images, a .parquet of images, or a .npz of statistics")
    if path.suffix == ".npz":
        return {"stats": value}
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        return {"parquet": value}
    return {"folder": value}


def _flags() -> list[Setting]:
    """The units' settings that `darkroom eval` takes as flags (`--clip-model`, ...)."""
    return [s for s in registry.settings().values() if s.flag]


def eval_settings(args: argparse.Namespace, job: dict[str, Any]) -> dict[str, Any]:
    """The job file's eval: section with the flags laid over it."""
    settings = dict(job.get("eval") or {})
    flags = {
        "metrics": [m.strip() for m in args.metrics.split(",") if m.strip()]
        if args.metrics else None,
        "feature_extractor": args.feature_extractor,
        "reference": reference_from_arg(args.reference) if args.reference else None,
        "weights": args.weights, "backend": args.backend,
        **{s.field: getattr(args, s.field) for s in _flags()},
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.resamples is not None:
        settings["bootstrap"] = {**(settings.get("bootstrap") or {}),
                                 "resamples": args.resamples}
    if args.safety_threshold is not None:
        settings["safety"] = {**(settings.get("safety") or {}),
                              "threshold": args.safety_threshold}
    return settings


def run_eval(args: argparse.Namespace) -> int:
    """`darkroom eval`: score a job or run folder and log it to MLflow."""
    from darkroom.evals.runner import evaluate_job
    from darkroom.evals.spec import EvalSpec, TrackingSpec
    from darkroom.platform.config import validate

    problem = storage.check(args.output_dir)
    if problem:
        raise UserError(f"OUTPUT_DIR: {problem}")
    target = storage.location(args.output_dir)
    if not (storage.exists(target) and not storage.is_file(target)):
        raise UserError(f"OUTPUT_DIR `{args.output_dir}` is not a folder")
    run_ids = [r.strip() for r in args.runs.split(",")] if args.runs else None
    if storage.is_file(target / layout.RUN_INFO):  # a single run folder
        target, run_ids = target.parent, [target.name]
    job = read_job_file(target)
    spec = validate(EvalSpec, eval_settings(args, job), "eval settings (job.yaml and flags)")
    tracking = validate(TrackingSpec, job.get("tracking") or {}, "tracking settings")
    tracking = tracking.model_copy(update={k: v for k, v in {
        "uri": args.tracking_uri, "experiment": args.experiment}.items() if v})
    results = evaluate_job(target, spec, tracking, experiment=job.get("name") or target.name,
                           job_spec=job or {"output": str(target)}, run_ids=run_ids)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW
    from darkroom.evals.reporting.compare import fmt

    for result in results:
        metrics = result["metrics"]

        def interval(key: str, metrics=metrics) -> tuple[float, float] | None:
            low, high = metrics.get(key + CI_LOW), metrics.get(key + CI_HIGH)
            return None if low is None or high is None else (low, high)

        shown = ", ".join(f"{k}={fmt(v, interval(k))}" for k, v in metrics.items()
                          if not k.endswith((CI_LOW, CI_HIGH))) or "no metrics"
        print(f"{result['run_id']}: {result['images']} images; {shown}")
        for name, reason in result["missing"].items():
            print(f"  {name}: missing ({reason})")
        for warning in result["warnings"]:
            print(f"  warning: {warning}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """`darkroom compare`: rank an experiment's runs with their intervals; against a baseline
    run and real images if asked; optionally write the HTML report."""
    from darkroom.evals.reporting.compare import compare

    text, path = compare(args.experiment, args.metric, args.html, args.tracking_uri,
                         baseline=args.baseline, real=args.real_baseline,
                         correction=args.correction, output=args.output)
    print(text)
    if path is not None:
        print(f"report: {path}")
    return 0
