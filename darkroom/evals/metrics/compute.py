"""The metric registry: what each metric needs per image, and its math over one run.

A metric declares the per-image pass it needs (`part`, computed on actors by `scoring`), whether
higher is better, and the MLflow metric it is ranked by (`key`). `compute` gives a `Statistic`
per MLflow key: the value and, where it can be resampled, how to recompute it for bootstrap
resamples of the run's images. When a metric cannot be computed it raises `Unavailable` with the
reason, and the run records it as missing, never as 0.

Corpus metrics (FID, KID, FD-DINOv2, CMMD, precision/recall, density/coverage, per-category FID)
live in `corpus.py`; the per-image ones (CLIP score, safety, class accuracy, preference scores)
are here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from darkroom.evals.metrics.base import (
    Context,
    RunScores,
    Statistic,
    Unavailable,
    mean_statistic,
)
from darkroom.evals.metrics.corpus import (
    CATEGORY_PREFIX,
    UNIT,
    cmmd,
    coverage,
    density,
    fd_dinov2,
    fid,
    fid_per_category,
    kid,
    precision,
    recall,
)

__all__ = ["CLASSIFIERS", "METRICS", "Context", "Metric", "RunScores", "Statistic",
           "Unavailable", "class_accuracy", "clip_score", "fid", "higher_is_better", "kid",
           "safety"]


def clip_score(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """100 x cosine of CLIP image and prompt embeddings, averaged, floored at 0 (Hessel et al.
    2021, as torchmetrics' CLIPScore defines it)."""
    prompts = scores.column("prompt")
    has_prompt = np.array([bool(p) for p in prompts])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run (class-conditional or unconditional)")
    mean = mean_statistic(scores.column("clip_score"), has_prompt)
    truncated = np.asarray(scores.column("clip_truncated"), dtype=bool)[has_prompt]
    return {"clip_score": Statistic(max(mean.value, 0.0),
                                    lambda counts: np.maximum(mean.resample(counts), 0.0),
                                    (0.0, 100.0)),
            "clip_prompts_truncated": Statistic(float(truncated.sum()))}


def safety(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of images the safety checker flags, and the highest NSFW score."""
    flags = np.asarray(scores.column("nsfw_flag"), dtype=bool)
    if not len(flags):
        raise Unavailable("no images in this run")
    nsfw = np.asarray(scores.column("nsfw_score"), dtype=np.float64)
    return {"nsfw_rate": mean_statistic(flags, bounds=UNIT),
            "nsfw_score_max": Statistic(float(nsfw.max()))}


def class_accuracy(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of class-conditional images the classifier reads as the requested class."""
    labels = scores.column("class_label")
    asked = np.array([label is not None and not (isinstance(label, float) and np.isnan(label))
                      for label in labels])
    if not asked.any():
        raise Unavailable("not a class-conditional run (no class_label)")
    wanted = np.asarray(labels[asked], dtype=np.int64)
    classes = CLASSIFIERS[ctx.spec.classifier].num_classes
    if wanted.min() < 0 or wanted.max() >= classes:
        raise Unavailable(f"class labels {sorted(set(wanted.tolist()))[:8]} are outside the "
                          f"`{ctx.spec.classifier}` classifier's {classes} classes")
    predicted = np.asarray(scores.column("predicted_label"), dtype=np.int64)
    right = np.zeros(scores.count)
    right[asked] = predicted[asked] == wanted
    return {"class_accuracy": mean_statistic(right, asked, UNIT)}


def pickscore(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences;
    per image, the CLIP logit scale x cosine of the image and prompt embeddings; averaged."""
    prompts = scores.column("prompt")
    has_prompt = np.array([bool(p) for p in prompts])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run: PickScore judges an image against its prompt")
    return {"pickscore": mean_statistic(scores.column("pickscore"), has_prompt)}


def _features(extractor: str | None = None) -> Callable[[Any], str]:
    """The part that extracts an extractor's features (None: the configured one)."""
    return lambda spec: f"features.{extractor or spec.feature_extractor}"


def _fixed(part: str) -> Callable[[Any], str]:
    return lambda spec: part


@dataclass(frozen=True)
class Metric:
    """A registered metric: its direction, the per-image part it needs (a function of the eval
    spec), and its math (`compute` returns a Statistic per MLflow key, `key` among them)."""

    name: str
    key: str  # the MLflow metric it is ranked by
    higher_is_better: bool
    part: Callable[[Any], str]  # spec -> the per-image pass it needs (see scoring.PARTS)
    description: str
    compute: Callable[[RunScores, Context], dict[str, Statistic]]
    per_image: bool = False  # a mean of per-image values (as opposed to a corpus metric)


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("fid", "fid", False, _features(), "Fréchet distance to the reference features", fid),
    Metric("kid", "kid", False, _features(), "kernel (MMD^2) distance to the reference features",
           kid),
    Metric("fd_dinov2", "fd_dinov2", False, _features("dinov2"),
           "Fréchet distance on DINOv2 ViT-L/14 features", fd_dinov2),
    Metric("cmmd", "cmmd", False, _features("clip"),
           "MMD^2 (RBF kernel) on CLIP image embeddings, x1000", cmmd),
    Metric("precision", "precision", True, _features(),
           "share of images inside the real images' k-NN manifold (k=3)", precision),
    Metric("recall", "recall", True, _features(),
           "share of real images inside the generated k-NN manifold (k=3)", recall),
    Metric("density", "density", True, _features(),
           "real k-NN balls per generated image, over k (k=5)", density),
    Metric("coverage", "coverage", True, _features(),
           "share of real images whose k-NN ball holds a generated one (k=5)", coverage),
    Metric("fid_per_category", CATEGORY_PREFIX + "*", False, _features(),
           "FID of each prompt category's images", fid_per_category),
    Metric("clip_score", "clip_score", True, _fixed("clip"),
           "image-prompt agreement under CLIP, 0-100", clip_score, per_image=True),
    Metric("safety", "nsfw_rate", False, _fixed("safety"), "share of images flagged as NSFW",
           safety, per_image=True),
    Metric("class_accuracy", "class_accuracy", True, _fixed("classifier"),
           "share of images read as the requested class", class_accuracy, per_image=True),
    Metric("pickscore", "pickscore", True, _fixed("preference.pickscore"),
           "human-preference score of image and prompt (PickScore)", pickscore, per_image=True),
]}

# Every MLflow metric Darkroom logs, with its direction (for compare's ranking and Pareto front).
HIGHER_IS_BETTER: dict[str, bool] = {
    **{m.key: m.higher_is_better for m in METRICS.values()},
    "images_per_s": True, "seconds_per_image": False, "nsfw_score_max": False,
    "clip_prompts_truncated": False,
}


def higher_is_better(key: str) -> bool:
    """The direction of an MLflow key (per-category FIDs: lower; unknown keys: higher)."""
    if key.startswith(CATEGORY_PREFIX):
        return False
    return HIGHER_IS_BETTER.get(key, True)


@dataclass(frozen=True)
class Classifier:
    """A judge for class_accuracy: `load(weights)` gives a module with `predict(float NCHW)`."""

    load: Callable[[str | None], Any]
    num_classes: int


def _load_digits(weights: str | None):
    from darkroom.evals.extractors import load_digits

    return load_digits(weights)


CLASSIFIERS: dict[str, Classifier] = {"digits": Classifier(_load_digits, 10)}


def statistics(scores: RunScores, ctx: Context, names: list[str],
               skipped: dict[str, str] | None = None) -> tuple[dict[str, Statistic],
                                                               dict[str, str]]:
    """Each named metric's statistics for one run, and the metrics that are missing with their
    reasons (`skipped`: reasons known before the run was looked at)."""
    out: dict[str, Statistic] = {}
    missing: dict[str, str] = {}
    for name in names:
        metric = METRICS[name]
        reason = (skipped or {}).get(name) or scores.part_errors.get(metric.part(ctx.spec))
        if reason is None and scores.count == 0:
            reason = "the run has no images"
        if reason:
            missing[name] = reason
            continue
        try:
            out.update(metric.compute(scores, ctx))
        except Unavailable as err:
            missing[name] = str(err)
    return out, missing


CI_LOW, CI_HIGH = "_ci_low", "_ci_high"


def with_intervals(stats: dict[str, Statistic], counts: np.ndarray,
                   level: float) -> dict[str, float]:
    """The values, and `<key>_ci_low` / `<key>_ci_high` for every key that can be resampled
    (none when `counts` has no rows: bootstrap off)."""
    from darkroom.evals.metrics.bootstrap import interval

    values: dict[str, float] = {}
    for key, stat in stats.items():
        values[key] = stat.value
        if stat.resample is None or not len(counts):
            continue
        ci = interval(stat.value, stat.resample(counts), level, stat.bounds, stat.drifts)
        if ci is not None:
            values[key + CI_LOW], values[key + CI_HIGH] = ci.low, ci.high
    return values
