"""The new corpus metrics against independent computations written from the papers' formulas
(numpy/scipy), their resampled forms against explicitly resampled data, and identical sets."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.metrics.base import Context, RunScores, Unavailable
from darkroom.evals.metrics.corpus import (
    cmmd,
    coverage,
    density,
    fid,
    fid_per_category,
    precision,
    recall,
)
from darkroom.evals.metrics.distances import (
    MMD,
    Frechet,
    Stats,
    cleanfid_fid,
    mmd2_unbiased,
    polynomial_kernel,
    rbf_kernel,
)
from darkroom.evals.metrics.neighbours import Manifolds
from darkroom.evals.spec import EvalSpec
from tests.evals.oracles import (
    expand,
    gaussian_features,
    independent_fid,
    independent_kid,
    independent_mmd,
    independent_prdc,
    rbf,
)

# -- FID ----------------------------------------------------------------------------------------


def test_frechet_matches_the_formula_plain_and_resampled():
    x, y = gaussian_features(0, n=200, d=6), gaussian_features(1, n=300, d=6, shift=0.4)
    ref = Stats.of(y)
    frechet = Frechet(x, ref)
    assert frechet(np.ones((1, 200)))[0] == pytest.approx(independent_fid(x, y), rel=1e-6)
    assert cleanfid_fid(Stats.of(x), ref) == pytest.approx(independent_fid(x, y), rel=1e-6)
    counts = np.random.default_rng(3).multinomial(200, np.full(200, 1 / 200), size=3)
    for c, value in zip(counts, frechet(counts), strict=True):
        drawn, _ = expand(x, c)
        assert value == pytest.approx(independent_fid(drawn, y), rel=1e-6)


# -- MMD: KID and CMMD --------------------------------------------------------------------------


def test_mmd_matches_the_formula_for_both_kernels_plain_and_resampled():
    x, y = gaussian_features(2, n=120, d=5), gaussian_features(3, n=150, d=5, shift=0.3)
    assert mmd2_unbiased(x, y, polynomial_kernel) == pytest.approx(independent_kid(x, y),
                                                                   rel=1e-6)
    gauss = rbf_kernel(1.5)
    assert mmd2_unbiased(x, y, gauss) == pytest.approx(independent_mmd(x, y, rbf(1.5)),
                                                       rel=1e-6)
    counts = np.random.default_rng(4).multinomial(120, np.full(120, 1 / 120), size=3)
    for kernel, reference in ((polynomial_kernel, lambda a, b: (a @ b.T / 5 + 1) ** 3),
                              (gauss, rbf(1.5))):
        resampled = MMD(x, y, kernel, block=50)(counts)  # blocks smaller than the set
        for c, value in zip(counts, resampled, strict=True):
            drawn, source = expand(x, c)
            assert value == pytest.approx(independent_mmd(drawn, y, reference, source),
                                          rel=1e-6)


def _clip_ctx(reference: np.ndarray) -> Context:
    return Context(EvalSpec(), references={"clip": Stats.of(reference)})


def test_cmmd_is_1000_times_the_unbiased_rbf_mmd_of_normalised_embeddings():
    x, y = gaussian_features(5, n=80, d=8), gaussian_features(6, n=90, d=8, shift=0.5)
    value = cmmd(RunScores("r", {"row_id": np.arange(80), "features.clip": x}), _clip_ctx(y))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected = 1000 * independent_mmd(unit(x), unit(y), rbf(10.0))
    assert value["cmmd"].value == pytest.approx(expected, rel=1e-6) and expected > 0


def test_identical_sets():
    """FID of a set against its own statistics is 0; precision, recall and coverage are 1. The
    unbiased MMD^2 (KID, CMMD) of a set against itself is not 0 but exactly -2/n (mean k(x, x)
    - mean k(x_i, x_j), i != j): the estimator assumes two independent samples (the biased
    V-statistic, which the CMMD reference code computes, is 0 here by construction)."""
    x = gaussian_features(7, n=100, d=6)
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": Stats.of(x)})
    scores = RunScores("r", {"row_id": np.arange(100), "features.tiny": x, "features.clip": x})
    assert abs(fid(scores, ctx)["fid"].value) < 1e-6
    assert abs(Frechet(x, Stats.of(x))(np.ones((1, 100)))[0]) < 1e-6
    assert precision(scores, ctx)["precision"].value == 1.0
    assert recall(scores, ctx)["recall"].value == 1.0
    assert coverage(scores, ctx)["coverage"].value == 1.0
    for kernel in (polynomial_kernel, rbf_kernel(10.0)):
        k = kernel(x, x)
        offset = -2 / 100 * (np.trace(k) / 100 - (k.sum() - np.trace(k)) / (100 * 99))
        assert mmd2_unbiased(x, x, kernel) == pytest.approx(offset, rel=1e-6)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = rbf_kernel(10.0)(unit, unit)
    offset = -2 / 100 * (1 - (k.sum() - 100) / (100 * 99))
    assert cmmd(scores, _clip_ctx(x))["cmmd"].value == pytest.approx(1000 * offset, rel=1e-6)


# -- precision / recall / density / coverage ----------------------------------------------------


def test_precision_recall_density_coverage_match_the_papers():
    real, fake = gaussian_features(8, n=150, d=4), gaussian_features(9, n=120, d=4, shift=0.6)
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": Stats.of(real)})
    scores = RunScores("r", {"row_id": np.arange(120), "features.tiny": fake})
    pr, dc = independent_prdc(real, fake, 3), independent_prdc(real, fake, 5)
    assert precision(scores, ctx)["precision"].value == pytest.approx(pr["precision"], rel=1e-6)
    assert recall(scores, ctx)["recall"].value == pytest.approx(pr["recall"], rel=1e-6)
    assert density(scores, ctx)["density"].value == pytest.approx(dc["density"], rel=1e-6)
    assert coverage(scores, ctx)["coverage"].value == pytest.approx(dc["coverage"], rel=1e-6)
    assert 0.1 < pr["precision"] < 0.95 and 0.1 < pr["recall"] < 0.95  # not a trivial case


def test_resampled_prdc_is_the_statistic_of_the_drawn_rows():
    real, fake = gaussian_features(10, n=100, d=3), gaussian_features(11, n=90, d=3, shift=0.4)
    for k in (3, 5):
        manifolds = Manifolds(fake, real, k)
        counts = np.random.default_rng(k).multinomial(90, np.full(90, 1 / 90), size=4)
        for c in counts:
            drawn, _ = expand(fake, c)  # precision and density weigh repeats
            distinct = fake[c > 0]  # a manifold is made of the distinct samples
            expected = independent_prdc(real, drawn, k)
            row = c[None, :]
            assert manifolds.precision(row)[0] == pytest.approx(expected["precision"], rel=1e-6)
            assert manifolds.density(row)[0] == pytest.approx(expected["density"], rel=1e-6)
            assert manifolds.coverage(row)[0] == pytest.approx(expected["coverage"], rel=1e-6)
            assert manifolds.recall(row)[0] == pytest.approx(
                independent_prdc(real, distinct, k)["recall"], rel=1e-6)


def test_per_category_fid_and_its_missing_reason():
    real = gaussian_features(12, n=200, d=4)
    a = gaussian_features(12, n=60, d=4, seed_data=1)
    b = gaussian_features(12, n=60, d=4, shift=1.0, seed_data=2)
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": Stats.of(real)})
    scores = RunScores("r", {"row_id": np.arange(121), "features.tiny": np.vstack([a, b, a[:1]]),
                             "category": np.array(["cats"] * 60 + ["dogs/wolves"] * 60 + ["x"],
                                                  dtype=object)})
    out = fid_per_category(scores, ctx)
    assert set(out) == {"fid_category.cats", "fid_category.dogs_wolves"}  # "/" is not allowed
    assert out["fid_category.cats"].value == pytest.approx(independent_fid(a, real), rel=1e-6)
    assert out["fid_category.dogs_wolves"].value > 5 * out["fid_category.cats"].value
    assert any("category 'x' has 1 image" in w for w in ctx.warnings)
    ctx.memo["category_reason"] = "the prompt file p.jsonl has no `category` column"
    with pytest.raises(Unavailable, match="p.jsonl has no `category` column"):
        fid_per_category(RunScores("r", {"row_id": np.arange(3),
                                         "features.tiny": a[:3]}), ctx)


def test_non_finite_features_or_values_are_missing_with_a_reason():
    """NaN features (a damaged cache, a broken extractor) make their metrics missing with the
    reason, never a NaN logged as a value; a value that comes out non-finite likewise."""
    from darkroom.evals.metrics.compute import statistics

    real, fake = gaussian_features(14, n=80, d=4), gaussian_features(15, n=60, d=4, shift=0.2)
    ctx = Context(EvalSpec(feature_extractor="tiny", kid_subset_size=20),
                  references={"tiny": Stats.of(real)})
    broken = fake.copy()
    broken[7, 2] = np.nan
    scores = RunScores("r", {"row_id": np.arange(60), "features.tiny": broken})
    stats, missing = statistics(scores, ctx, ["fid", "kid", "precision"])
    assert not stats
    for name in ("fid", "kid", "precision"):
        assert "1 image(s) have non-finite (NaN or infinite) tiny features" in missing[name]

    bad_reference = Stats(np.full(4, np.nan), np.eye(4), 80, real)
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": bad_reference})
    stats, missing = statistics(RunScores("r", {"row_id": np.arange(60),
                                                "features.tiny": fake}), ctx, ["fid"])
    assert "fid" not in stats and "not a finite number" in missing["fid"]
