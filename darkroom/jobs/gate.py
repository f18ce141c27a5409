"""`darkroom gate`: a speed option judged by what it does to the images.

The same job runs twice, on the same rows (prompts, seeds, settings): a baseline arm as written
and a candidate arm with the options under test (`KEY=VALUE` overrides such as
`runtime.cache={kind: first_block, threshold: 0.05}`). Runtime options are not part of a run's
id, so both arms hold the same row ids and every image has its twin. The gate reports the
speed-up (actor seconds per image), per-image PSNR and SSIM of each candidate image against its
twin (Wang et al. 2004), and the change of every metric of the job's `eval:` section, then
fails (exit code 1) when a tolerance is exceeded. Both arms and the verdict go to MLflow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from darkroom.jobs.devices import device_problems
from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import JobFailed, JobResult, run_job
from darkroom.jobs.spec import GateSpec, JobSpec
from darkroom.platform.data import layout
from darkroom.platform.errors import UserError


@dataclass
class GateResult:
    """What the gate measured, and which tolerances failed."""

    options: list[str]
    speedup: float
    psnr_mean: float
    psnr_min: float
    ssim_mean: float
    ssim_min: float
    images: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> base, cand, delta
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The result as plain data (`gate.json`, MLflow)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def arms(spec: JobSpec, options: Sequence[str]) -> tuple[JobSpec, JobSpec]:
    """(baseline, candidate): the job as written and with the options, each under its own name
    (the candidate's names its options, so a rerun of the same gate generates nothing and
    another option set gets its own images), both logged to one MLflow experiment."""
    if not options:
        raise UserError("give the options to judge: --option KEY=VALUE (e.g. "
                        "runtime.cache='{kind: first_block, threshold: 0.05}'), or `gate.options`")
    data = spec.dump()
    data.pop("gate", None)
    experiment = spec.tracking.experiment or f"{spec.name}-gate"
    common = [f"tracking.experiment={experiment}"]
    baseline = validate(data, overrides=[f"name={spec.name}.baseline", *common],
                        source="gate baseline")
    digest = hashlib.sha256("\n".join(options).encode()).hexdigest()[:8]
    candidate = validate(data, overrides=[f"name={spec.name}.candidate-{digest}", *common,
                                          *options], source="gate options")
    if candidate.model_dump(exclude={"name", "runtime"}) != baseline.model_dump(
            exclude={"name", "runtime"}):
        raise UserError("the gate judges runtime options only (`runtime.*`): other changes would "
                        "make other images, not the same ones faster")
    return baseline, candidate


def run_gate(spec: JobSpec, options: Sequence[str], gate: GateSpec,
             log: Callable[[str], None] = print) -> GateResult:
    """Run both arms, compare them, and check the tolerances."""
    baseline, candidate = arms(spec, options)
    for arm in (baseline, candidate):  # both before either runs
        device_problems(arm, arm.name)
    log(f"gate: baseline {baseline.name}, candidate {candidate.name} with {' '.join(options)}")
    base, cand = run_job(baseline, log=log), run_job(candidate, log=log)
    psnr, ssim = image_quality(base, cand)
    result = GateResult(
        list(options), speedup=_seconds_per_image(base) / _seconds_per_image(cand),
        psnr_mean=float(sum(psnr) / len(psnr)), psnr_min=float(min(psnr)),
        ssim_mean=float(sum(ssim) / len(ssim)), ssim_min=float(min(ssim)), images=len(psnr),
        metrics=metric_changes(base.metrics, cand.metrics),
    )
    result.failures = tolerance_failures(result, gate)
    _log_to_mlflow(spec, result, gate)
    log(format_gate(result))
    return result


def _seconds_per_image(result: JobResult) -> float:
    images = sum(t["images"] for t in result.timings.values())
    seconds = sum(t["seconds"] for t in result.timings.values())
    if not images or not seconds:
        raise JobFailed(f"{result.job_dir} has no timed images to compare")
    return seconds / images


def image_quality(base: JobResult, cand: JobResult) -> tuple[list[float], list[float]]:
    """PSNR (dB, 255 range) and SSIM of every candidate image against its baseline twin."""
    import numpy as np
    import torch
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from darkroom.platform.data.records import decode_png

    psnr: list[float] = []
    ssim: list[float] = []
    for run in base.runs:
        twins = {}
        for job_dir in (base.job_dir, cand.job_dir):
            table = layout.read_table(job_dir / run.run_id / layout.IMAGES, ["row_id", "image"])
            rows = {} if table is None else dict(zip(table.column("row_id").to_pylist(),
                                                     table.column("image").to_pylist(),
                                                     strict=True))
            twins[job_dir] = rows
        for row_id, image in twins[base.job_dir].items():
            other = twins[cand.job_dir].get(row_id)
            if other is None:
                continue
            pair = [torch.from_numpy(decode_png(x).astype(np.float32)).permute(2, 0, 1)[None]
                    for x in (image, other)]
            # identical images have an infinite PSNR: cap it where 8-bit images stop differing
            psnr.append(min(float(peak_signal_noise_ratio(pair[1], pair[0], data_range=255.0)),
                            100.0))
            ssim.append(float(structural_similarity_index_measure(pair[1], pair[0],
                                                                  data_range=255.0)))
    if not psnr:
        raise JobFailed("the two arms share no image: nothing to compare")
    return psnr, ssim


def metric_changes(base: list[dict], cand: list[dict]) -> dict[str, dict[str, float]]:
    """Each metric's mean over the runs in both arms and the change (candidate - baseline), with
    the baseline's 95% interval where evaluation gives one (`<key>_ci_low`, `<key>_ci_high`): a
    change inside it is within what another seed would give."""
    changes = {}
    keys = {k for r in base for k in r["metrics"]} & {k for r in cand for k in r["metrics"]}
    for key in sorted(k for k in keys if not k.endswith(("_ci_low", "_ci_high"))):
        values = [[r["metrics"][key] for r in arm if key in r["metrics"]] for arm in (base, cand)]
        b, c = (sum(v) / len(v) for v in values)
        changes[key] = {"baseline": b, "candidate": c, "delta": c - b}
        bounds = [[r["metrics"].get(f"{key}{end}") for r in base] for end in ("_ci_low",
                                                                                 "_ci_high")]
        if all(x is not None for x in bounds[0] + bounds[1]) and len(base) == 1:
            changes[key]["baseline_ci"] = [bounds[0][0], bounds[1][0]]
    return changes


def tolerance_failures(result: GateResult, gate: GateSpec) -> list[str]:
    """The tolerances the candidate exceeds, each as a sentence."""
    from darkroom.evals.metrics.compute import HIGHER_IS_BETTER

    failures = []
    if gate.min_speedup is not None and result.speedup < gate.min_speedup:
        failures.append(f"speed-up {result.speedup:.2f}x is below min_speedup {gate.min_speedup}")
    if gate.min_psnr is not None and result.psnr_mean < gate.min_psnr:
        failures.append(f"mean PSNR {result.psnr_mean:.2f} dB is below min_psnr {gate.min_psnr}")
    if gate.min_ssim is not None and result.ssim_mean < gate.min_ssim:
        failures.append(f"mean SSIM {result.ssim_mean:.4f} is below min_ssim {gate.min_ssim}")
    for key, allowed in gate.max_worsening.items():
        change = result.metrics.get(key)
        if change is None:
            failures.append(f"`{key}` was not measured in both arms: add it to `eval.metrics`")
            continue
        worse = -change["delta"] if HIGHER_IS_BETTER.get(key, False) else change["delta"]
        if worse > allowed:
            failures.append(f"{key} got worse by {worse:.4g} (baseline {change['baseline']:.4g}, "
                            f"candidate {change['candidate']:.4g}), more than {allowed}")
    return failures


def format_gate(result: GateResult) -> str:
    """The gate's report: speed, image fidelity, metric changes and the verdict."""
    lines = [f"options: {' '.join(result.options)}",
             f"speed-up: {result.speedup:.2f}x (actor seconds per image)",
             f"images compared: {result.images}; PSNR mean {result.psnr_mean:.2f} dB, min "
             f"{result.psnr_min:.2f}; SSIM mean {result.ssim_mean:.4f}, min {result.ssim_min:.4f}"]
    for key, change in result.metrics.items():
        lines.append(f"  {key:<20} {change['baseline']:>12.4g} -> {change['candidate']:<12.4g} "
                     f"({change['delta']:+.4g}){_against_interval(change)}")
    lines.append("gate: FAILED\n  " + "\n  ".join(result.failures) if result.failures
                 else "gate: passed")
    return "\n".join(lines)


def _against_interval(change: dict[str, Any]) -> str:
    """Where the candidate falls in the baseline's interval; an interval of zero width (the
    resamples could not vary) judges nothing, and says so."""
    ci = change.get("baseline_ci")
    if ci is None:
        return ""
    if ci[0] == ci[1]:
        return (f"  baseline 95% interval of zero width at {ci[0]:.4g}: it cannot judge the "
                "change (the run's warnings say why)")
    where = "inside" if ci[0] <= change["candidate"] <= ci[1] else "outside"
    return f"  baseline 95% interval [{ci[0]:.4g}, {ci[1]:.4g}]: candidate {where}"


def _log_to_mlflow(spec: JobSpec, result: GateResult, gate: GateSpec) -> None:
    """A `gate` run with the verdict, parent of one run per arm holding the arm's means."""
    from darkroom.evals.reporting import tracking

    client = tracking.client(spec.tracking.uri)
    experiment = tracking.experiment_id(client, spec.tracking.experiment or f"{spec.name}-gate")
    key = tracking.path_key("gate", spec.name, json.dumps(result.options))
    with tracking.run_scope(client, experiment, key, f"gate-{spec.name}",
                            {tracking.KIND: "gate"}) as parent:
        tracking.log_params(client, parent, {"options": " ".join(result.options),
                                             **gate.model_dump(exclude={"options"})})
        metrics = {"speedup": result.speedup, "psnr_mean": result.psnr_mean,
                   "psnr_min": result.psnr_min, "ssim_mean": result.ssim_mean,
                   "ssim_min": result.ssim_min, "failed_tolerances": len(result.failures),
                   **{f"{k}_delta": v["delta"] for k, v in result.metrics.items()}}
        metrics = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
        tracking.log_metrics(client, parent, metrics, {})
        tracking.log_files(client, parent, {"gate.json": tracking.to_json(result.summary())})
        for arm in ("baseline", "candidate"):
            tags = {tracking.KIND: "gate-arm", tracking.PARENT: parent}
            with tracking.run_scope(client, experiment, f"{key}-{arm}", f"{spec.name}.{arm}",
                                    tags) as child:
                tracking.log_metrics(client, child, {k: v[arm] for k, v in
                                                     result.metrics.items()}, {})


def gate_settings(spec: JobSpec, options: Sequence[str], tolerances: Sequence[str]
                  ) -> tuple[list[str], GateSpec]:
    """The options and tolerances: the job's `gate:` section with the command line's on top."""
    gate = spec.gate or GateSpec()
    data = gate.model_dump()
    for item in tolerances:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--tolerance takes NAME=VALUE, got {item!r}")
        if name in ("min_speedup", "min_psnr", "min_ssim"):
            data[name] = value
        else:
            data["max_worsening"][name] = value
    return [*gate.options, *options], validate_gate(data)


def validate_gate(data: dict[str, Any]) -> GateSpec:
    """A GateSpec from plain data, in the one config error format."""
    from darkroom.platform.config import validate as validate_model

    return validate_model(GateSpec, data, "gate settings")

