"""Corpus metrics: functions of a run's feature array against the reference, each with its
bootstrap resampler (the reference stays fixed; only the generated rows are resampled).

- `fid`: Fréchet distance on the configured extractor's features (Heusel et al. 2017).
- `fd_dinov2`: the same on DINOv2 ViT-L/14 features (Stein et al. 2023).
- `kid`: unbiased MMD^2 with the cubic polynomial kernel (Bińkowski et al. 2018).
- `cmmd`: unbiased MMD^2 with a Gaussian RBF kernel (sigma 10) on L2-normalised CLIP image
  embeddings, times 1000 (Jayasumana et al. 2024).
- `precision`, `recall` (k = 3; Kynkäänniemi et al. 2019), `density`, `coverage` (k = 5; Naeem
  et al. 2020) on the configured extractor's features.
- `fid_per_category`: FID of each prompt category's images against the reference.

Each needs the `features` part of its extractor (`Part("features")`: the configured one).
"""

from __future__ import annotations

import re

import numpy as np

from darkroom.evals.metrics.base import (
    NON_NEGATIVE,
    UNIT,
    Context,
    RunScores,
    Statistic,
    Unavailable,
    feature_column,
)
from darkroom.evals.metrics.distances import (
    BACKENDS,
    MMD,
    Frechet,
    Stats,
    polynomial_kernel,
    rbf_kernel,
)
from darkroom.evals.metrics.neighbours import DC_K, PR_K, Manifolds
from darkroom.evals.units import FEATURES, Metric, Part

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0  # Jayasumana et al. 2024
CATEGORY_PREFIX = "fid_category."


def generated_features(scores: RunScores, ctx: Context, extractor: str,
                       metric: str) -> np.ndarray:
    """The run's features under `extractor` (N x d float64), checked against the reference."""
    features = np.asarray(scores.column(feature_column(extractor)), dtype=np.float64)
    if len(features) < 2:
        raise Unavailable(f"{metric} needs at least 2 images, this run has {len(features)}")
    broken = int((~np.isfinite(features).reshape(len(features), -1).all(axis=1)).sum())
    if broken:
        raise Unavailable(f"{broken} image(s) have non-finite (NaN or infinite) {extractor} "
                          "features; evaluate the run again, or check the extractor's weights")
    ref = ctx.reference(extractor)
    if features.shape[1] != ref.mu.shape[0]:
        raise Unavailable(f"feature sizes differ: {features.shape[1]} generated vs "
                          f"{ref.mu.shape[0]} in the reference statistics")
    dims = features.shape[1]
    if len(features) < dims and metric in ("fid", "fd_dinov2"):
        ctx.warnings.append(
            f"{scores.run_id}: {metric} from {len(features)} images with {dims}-d features: "
            f"the covariance is rank-deficient, so it is biased and unstable; use at least {dims}"
        )
    return features


def _reference_features(ctx: Context, extractor: str, metric: str) -> np.ndarray:
    ref = ctx.reference(extractor)
    if ref.features is None:
        raise Unavailable(f"the reference statistics hold no features (a stats file with only "
                          f"mu/sigma): {metric} needs the reference features")
    return np.asarray(ref.features, np.float64)


def frechet(features: np.ndarray, ref: Stats, backend: str) -> Statistic:
    """FID of `features` against `ref` by the backend, resampled by `Frechet`."""
    try:
        value = BACKENDS[backend].fid(Stats.of(features), ref)
    except ValueError as err:
        raise Unavailable(str(err)) from err
    return Statistic(value, Frechet(features, ref), NON_NEGATIVE, drifts=True)


def fid(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Fréchet distance between Gaussians fitted to the features (Heusel et al. 2017)."""
    extractor = ctx.spec.feature_extractor
    features = generated_features(scores, ctx, extractor, "fid")
    return {"fid": frechet(features, ctx.reference(extractor), ctx.spec.backend)}


def fd_dinov2(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """FD-DINOv2 (Stein et al. 2023): the Fréchet distance on DINOv2 ViT-L/14 CLS features,
    which track human judgements of realism better than Inception's."""
    features = generated_features(scores, ctx, "dinov2", "fd_dinov2")
    return {"fd_dinov2": frechet(features, ctx.reference("dinov2"), ctx.spec.backend)}


def kid(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Squared MMD with a cubic polynomial kernel, over random subsets (Bińkowski et al. 2018)."""
    extractor = ctx.spec.feature_extractor
    reference = _reference_features(ctx, extractor, "KID")
    gen = generated_features(scores, ctx, extractor, "kid")
    size = min(ctx.spec.kid_subset_size, len(gen), len(reference))
    if size < ctx.spec.kid_subset_size:
        ctx.warnings.append(f"{scores.run_id}: KID subsets of {size} images (asked for "
                            f"{ctx.spec.kid_subset_size}): fewer images than that")
    value = BACKENDS[ctx.spec.backend].kid(gen, reference, ctx.spec.kid_subsets, size)
    # The interval comes from the full-set unbiased estimate (what the subset average
    # estimates); its reference-only term is a constant, which the interval's shift onto the
    # value takes out, so it is not computed.
    resample = MMD(gen, reference, polynomial_kernel, reference_term=False)
    return {"kid": Statistic(value, resample, drifts=True)}


def cmmd(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """CMMD (Jayasumana et al. 2024): 1000 x the unbiased MMD^2 with the Gaussian RBF kernel
    (sigma 10) between L2-normalised CLIP image embeddings of the images and the reference."""

    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    gen = unit(generated_features(scores, ctx, "clip", "cmmd"))
    reference = unit(_reference_features(ctx, "clip", "CMMD"))
    if len(reference) < 2:
        raise Unavailable("CMMD needs at least 2 reference images")
    mmd = MMD(gen, reference, rbf_kernel(CMMD_SIGMA))
    value = float(CMMD_SCALE * mmd(np.ones((1, len(gen))))[0])
    return {"cmmd": Statistic(value, lambda counts: CMMD_SCALE * mmd(counts))}


def _manifolds(scores: RunScores, ctx: Context, k: int, metric: str) -> Manifolds:
    extractor = ctx.spec.feature_extractor
    key = ("manifolds", id(scores), extractor, k)
    if key not in ctx.memo:  # precision and recall (density and coverage) share the distances
        gen = generated_features(scores, ctx, extractor, metric)
        try:
            ctx.memo[key] = Manifolds(gen, _reference_features(ctx, extractor, metric), k)
        except ValueError as err:
            raise Unavailable(str(err)) from err
    return ctx.memo[key]


def _ones(scores: RunScores) -> np.ndarray:
    return np.ones((1, scores.count))


def _manifold_statistic(scores: RunScores, ctx: Context, name: str, k: int,
                        bounds: tuple[float, float]) -> dict[str, Statistic]:
    manifolds = _manifolds(scores, ctx, k, name)
    resample = getattr(manifolds, name)
    # recall and coverage count distinct drawn images, which a resample has fewer of
    return {name: Statistic(float(resample(_ones(scores))[0]), resample, bounds,
                            drifts=name in ("recall", "coverage"))}


def precision(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of generated images inside the real images' k-NN manifold, k = 3 (Kynkäänniemi et
    al. 2019): how many samples look real."""
    return _manifold_statistic(scores, ctx, "precision", PR_K, UNIT)


def recall(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of real images inside the generated images' k-NN manifold, k = 3 (Kynkäänniemi et
    al. 2019): how much of the real variety is reached."""
    return _manifold_statistic(scores, ctx, "recall", PR_K, UNIT)


def density(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Real k-NN balls holding each generated image, averaged, over k; k = 5 (Naeem et al.
    2020): about 1 for matching sets, robust to outliers in the real set."""
    return _manifold_statistic(scores, ctx, "density", DC_K, NON_NEGATIVE)


def coverage(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of real images whose k-NN ball holds a generated image, k = 5 (Naeem et al. 2020)."""
    return _manifold_statistic(scores, ctx, "coverage", DC_K, UNIT)


def category_key(category: str) -> str:
    """The MLflow key of a category's FID (characters MLflow refuses become `_`)."""
    return CATEGORY_PREFIX + re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(category))[:200]


def fid_per_category(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """FID of each prompt category's images against the whole reference (Heusel et al. 2017),
    for prompt files with a `category` column: which kinds of prompt a run does worse on."""
    if "category" not in scores.columns:
        raise Unavailable(ctx.memo.get("category_reason")
                          or "the prompts carry no `category` column")
    extractor = ctx.spec.feature_extractor
    features = generated_features(scores, ctx, extractor, "fid_per_category")
    ref = ctx.reference(extractor)
    categories = np.asarray(scores.columns["category"], dtype=object)
    out: dict[str, Statistic] = {}
    for category in sorted({c for c in categories if c is not None and c == c}, key=str):
        rows = np.flatnonzero(categories == category)
        if len(rows) < 2:
            ctx.warnings.append(f"{scores.run_id}: category {category!r} has {len(rows)} image; "
                                "its FID needs at least 2")
            continue
        whole = frechet(features[rows], ref, ctx.spec.backend)
        out[category_key(category)] = Statistic(
            whole.value, lambda counts, rows=rows, f=whole.resample: f(counts[:, rows]),
            NON_NEGATIVE, drifts=True)
    if not out:
        raise Unavailable("no category has 2 or more images")
    return out


CONFIGURED = Part(FEATURES)  # the configured `feature_extractor`'s features

UNITS = (
    Metric("fid", "fid", False, CONFIGURED, "Fréchet distance to the reference features", fid),
    Metric("kid", "kid", False, CONFIGURED, "kernel (MMD^2) distance to the reference features",
           kid),
    Metric("fd_dinov2", "fd_dinov2", False, Part(FEATURES, "dinov2"),
           "Fréchet distance on DINOv2 ViT-L/14 features", fd_dinov2),
    Metric("cmmd", "cmmd", False, Part(FEATURES, "clip"),
           "MMD^2 (RBF kernel) on CLIP image embeddings, x1000", cmmd),
    Metric("precision", "precision", True, CONFIGURED,
           "share of images inside the real images' k-NN manifold (k=3)", precision),
    Metric("recall", "recall", True, CONFIGURED,
           "share of real images inside the generated k-NN manifold (k=3)", recall),
    Metric("density", "density", True, CONFIGURED,
           "real k-NN balls per generated image, over k (k=5)", density),
    Metric("coverage", "coverage", True, CONFIGURED,
           "share of real images whose k-NN ball holds a generated one (k=5)", coverage),
    Metric("fid_per_category", CATEGORY_PREFIX + "*", False, CONFIGURED,
           "FID of each prompt category's images", fid_per_category),
)
