"""The metric registry: what each metric needs per image, and its corpus math over one run.

A metric declares the per-image pass it needs (`part`, computed on actors by `scoring`), whether
higher is better, and the MLflow metric it logs (`key`). When it cannot be computed it raises
`Unavailable` with the reason, and the run records it as missing, never as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkroom.evals.distances import BACKENDS, Stats


class Unavailable(Exception):
    """This metric cannot be computed for this run; the message is the reason."""


@dataclass
class RunScores:
    """One run's per-image results, in row_id order (columns named as in the scores Parquet)."""

    run_id: str
    columns: dict[str, np.ndarray]
    part_errors: dict[str, str] = field(default_factory=dict)  # part -> why it did not load

    @property
    def count(self) -> int:
        """The number of images (rows) in the run."""
        return len(self.columns["row_id"])

    def column(self, name: str) -> np.ndarray:
        """The named per-image column; raises `Unavailable` when it was not computed."""
        if name not in self.columns:
            raise Unavailable(f"no `{name}` column was computed")
        return self.columns[name]


@dataclass
class Context:
    """What the corpus math of every run shares: the settings and the reference statistics."""

    spec: Any  # EvalSpec
    reference: Stats | None = None
    warnings: list[str] = field(default_factory=list)


def _reference(ctx: Context) -> Stats:
    if ctx.reference is None:
        raise Unavailable("no reference images (eval.reference)")
    return ctx.reference


def _gen_features(scores: RunScores, ctx: Context, metric: str) -> np.ndarray:
    features = np.asarray(scores.column("features"), dtype=np.float64)
    if len(features) < 2:
        raise Unavailable(f"{metric} needs at least 2 images, this run has {len(features)}")
    dims = features.shape[1]
    if len(features) < dims and metric == "fid":
        ctx.warnings.append(
            f"{scores.run_id}: FID from {len(features)} images with {dims}-d features: the "
            f"covariance is rank-deficient, so FID is biased and unstable; use at least {dims}"
        )
    return features


def fid(scores: RunScores, ctx: Context) -> dict[str, float]:
    """Fréchet distance between Gaussians fitted to the features (Heusel et al. 2017)."""
    ref = _reference(ctx)
    gen = Stats.of(_gen_features(scores, ctx, "fid"))
    if gen.mu.shape != ref.mu.shape:
        raise Unavailable(f"feature sizes differ: {gen.mu.shape[0]} generated vs "
                          f"{ref.mu.shape[0]} in the reference statistics")
    try:
        return {"fid": BACKENDS[ctx.spec.backend].fid(gen, ref)}
    except ValueError as err:
        raise Unavailable(str(err)) from err


def kid(scores: RunScores, ctx: Context) -> dict[str, float]:
    """Squared MMD with a cubic polynomial kernel, over random subsets (Bińkowski et al. 2018)."""
    ref = _reference(ctx)
    if ref.features is None:
        raise Unavailable("the reference statistics hold no features (a stats file with only "
                          "mu/sigma): KID needs the reference features")
    gen = _gen_features(scores, ctx, "kid")
    size = min(ctx.spec.kid_subset_size, len(gen), len(ref.features))
    if size < ctx.spec.kid_subset_size:
        ctx.warnings.append(f"{scores.run_id}: KID subsets of {size} images (asked for "
                            f"{ctx.spec.kid_subset_size}): fewer images than that")
    value = BACKENDS[ctx.spec.backend].kid(gen, ref.features, ctx.spec.kid_subsets, size)
    return {"kid": value}


def clip_score(scores: RunScores, ctx: Context) -> dict[str, float]:
    """100 x cosine of CLIP image and prompt embeddings, averaged, floored at 0 (Hessel et al.
    2021, as torchmetrics' CLIPScore defines it)."""
    prompts = scores.column("prompt")
    has_prompt = np.array([bool(p) for p in prompts])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run (class-conditional or unconditional)")
    values = np.asarray(scores.column("clip_score"), dtype=np.float64)[has_prompt]
    truncated = np.asarray(scores.column("clip_truncated"), dtype=bool)[has_prompt]
    return {"clip_score": max(float(values.mean()), 0.0),
            "clip_prompts_truncated": float(truncated.sum())}


def safety(scores: RunScores, ctx: Context) -> dict[str, float]:
    """Share of images the safety checker flags, and the highest NSFW score."""
    flags = np.asarray(scores.column("nsfw_flag"), dtype=bool)
    if not len(flags):
        raise Unavailable("no images in this run")
    nsfw = np.asarray(scores.column("nsfw_score"), dtype=np.float64)
    return {"nsfw_rate": float(flags.mean()), "nsfw_score_max": float(nsfw.max())}


def class_accuracy(scores: RunScores, ctx: Context) -> dict[str, float]:
    """Share of class-conditional images the classifier reads as the requested class."""
    labels = scores.column("class_label")
    asked = np.array([label is not None and not (isinstance(label, float) and np.isnan(label))
                      for label in labels])
    if not asked.any():
        raise Unavailable("not a class-conditional run (no class_label)")
    wanted = np.asarray(labels[asked], dtype=np.int64)
    predicted = np.asarray(scores.column("predicted_label"), dtype=np.int64)[asked]
    classes = CLASSIFIERS[ctx.spec.classifier].num_classes
    if wanted.min() < 0 or wanted.max() >= classes:
        raise Unavailable(f"class labels {sorted(set(wanted.tolist()))[:8]} are outside the "
                          f"`{ctx.spec.classifier}` classifier's {classes} classes")
    return {"class_accuracy": float((predicted == wanted).mean())}


@dataclass(frozen=True)
class Metric:
    """A registered metric: its direction, the per-image part it needs, and its corpus math
    (`compute` returns the MLflow metrics it logs, `key` among them)."""

    name: str
    key: str  # the MLflow metric it is ranked by
    higher_is_better: bool
    part: str  # the per-image pass it needs (see scoring.PARTS)
    description: str
    compute: Callable[[RunScores, Context], dict[str, float]]


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("fid", "fid", False, "features", "Fréchet distance to the reference features", fid),
    Metric("kid", "kid", False, "features", "kernel (MMD^2) distance to the reference features",
           kid),
    Metric("clip_score", "clip_score", True, "clip", "image-prompt agreement under CLIP, 0-100",
           clip_score),
    Metric("safety", "nsfw_rate", False, "safety", "share of images flagged as NSFW", safety),
    Metric("class_accuracy", "class_accuracy", True, "classifier",
           "share of images read as the requested class", class_accuracy),
]}

# Every MLflow metric Darkroom logs, with its direction (for compare's ranking and Pareto front).
HIGHER_IS_BETTER: dict[str, bool] = {
    **{m.key: m.higher_is_better for m in METRICS.values()},
    "images_per_s": True, "seconds_per_image": False, "nsfw_score_max": False,
    "clip_prompts_truncated": False,
}


@dataclass(frozen=True)
class Classifier:
    """A judge for class_accuracy: `load(weights)` gives a module with `predict(float NCHW)`."""

    load: Callable[[str | None], Any]
    num_classes: int


def _load_digits(weights: str | None):
    from darkroom.evals.extractors import load_digits

    return load_digits(weights)


CLASSIFIERS: dict[str, Classifier] = {"digits": Classifier(_load_digits, 10)}
