"""The new corpus metrics against independent computations written from the papers' formulas
(numpy/scipy), their resampled forms against explicitly resampled data, and identical sets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

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


def _features(seed: int, n: int = 300, d: int = 12, shift: float = 0.0,
              seed_data: int | None = None) -> np.ndarray:
    """Correlated Gaussian features: `seed` fixes the distribution, `seed_data` the sample."""
    mixing = np.random.default_rng(seed).normal(size=(d, d)) / np.sqrt(d)
    rng = np.random.default_rng(seed if seed_data is None else seed_data)
    return rng.normal(size=(n, d)) @ mixing + shift


def independent_fid(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^1/2) (Heusel et al. 2017)."""
    mx, my = x.mean(0), y.mean(0)
    sx = (x - mx).T @ (x - mx) / (len(x) - 1)
    sy = (y - my).T @ (y - my) / (len(y) - 1)
    root = scipy.linalg.sqrtm(sx)
    middle = np.linalg.eigvalsh(root @ sy @ root)
    return float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy)
                 - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def independent_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 over the whole sets (Bińkowski et al.)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def _expand(x: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The resample written out: each row repeated as often as drawn, with its source index."""
    source = np.repeat(np.arange(len(x)), counts)
    return x[source], source


# -- FID ----------------------------------------------------------------------------------------


def test_frechet_matches_the_formula_plain_and_resampled():
    x, y = _features(0, n=200, d=6), _features(1, n=300, d=6, shift=0.4)
    ref = Stats.of(y)
    frechet = Frechet(x, ref)
    assert frechet(np.ones((1, 200)))[0] == pytest.approx(independent_fid(x, y), rel=1e-6)
    assert cleanfid_fid(Stats.of(x), ref) == pytest.approx(independent_fid(x, y), rel=1e-6)
    counts = np.random.default_rng(3).multinomial(200, np.full(200, 1 / 200), size=3)
    for c, value in zip(counts, frechet(counts), strict=True):
        drawn, _ = _expand(x, c)
        assert value == pytest.approx(independent_fid(drawn, y), rel=1e-6)


# -- MMD: KID and CMMD --------------------------------------------------------------------------


def independent_mmd(x, y, kernel, source=None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3); pairs of rows drawn from the same source row
    are left out of the within-set mean, as the pair (i, i) is."""
    source = np.arange(len(x)) if source is None else source
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    distinct = source[:, None] != source[None, :]
    m = len(y)
    return float(kxx[distinct].sum() / distinct.sum()
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def _rbf(sigma):
    return lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))


def test_mmd_matches_the_formula_for_both_kernels_plain_and_resampled():
    x, y = _features(2, n=120, d=5), _features(3, n=150, d=5, shift=0.3)
    assert mmd2_unbiased(x, y, polynomial_kernel) == pytest.approx(independent_kid(x, y),
                                                                   rel=1e-6)
    gauss = rbf_kernel(1.5)
    assert mmd2_unbiased(x, y, gauss) == pytest.approx(independent_mmd(x, y, _rbf(1.5)),
                                                       rel=1e-6)
    counts = np.random.default_rng(4).multinomial(120, np.full(120, 1 / 120), size=3)
    for kernel, reference in ((polynomial_kernel, lambda a, b: (a @ b.T / 5 + 1) ** 3),
                              (gauss, _rbf(1.5))):
        resampled = MMD(x, y, kernel, block=50)(counts)  # blocks smaller than the set
        for c, value in zip(counts, resampled, strict=True):
            drawn, source = _expand(x, c)
            assert value == pytest.approx(independent_mmd(drawn, y, reference, source),
                                          rel=1e-6)


def _clip_ctx(reference: np.ndarray) -> Context:
    return Context(EvalSpec(), references={"clip": Stats.of(reference)})


def test_cmmd_is_1000_times_the_unbiased_rbf_mmd_of_normalised_embeddings():
    x, y = _features(5, n=80, d=8), _features(6, n=90, d=8, shift=0.5)
    value = cmmd(RunScores("r", {"row_id": np.arange(80), "features.clip": x}), _clip_ctx(y))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected = 1000 * independent_mmd(unit(x), unit(y), _rbf(10.0))
    assert value["cmmd"].value == pytest.approx(expected, rel=1e-6) and expected > 0


def test_identical_sets():
    """FID of a set against its own statistics is 0; precision, recall and coverage are 1. The
    unbiased MMD^2 (KID, CMMD) of a set against itself is not 0 but exactly -2/n (mean k(x, x)
    - mean k(x_i, x_j), i != j): the estimator assumes two independent samples (the biased
    V-statistic, which the CMMD reference code computes, is 0 here by construction)."""
    x = _features(7, n=100, d=6)
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


def independent_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Kynkäänniemi et al. 2019 (precision, recall) and Naeem et al. 2020 (density, coverage)
    with scipy distances; a sample's radius is its k-th nearest other sample of its set."""
    real_radius = np.sort(cdist(real, real), axis=1)[:, k]  # column 0: the sample itself
    fake_radius = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)  # fake x real
    return {
        "precision": float(np.mean([(d[j] <= real_radius).any() for j in range(len(fake))])),
        "recall": float(np.mean([(d[:, i] <= fake_radius).any() for i in range(len(real))])),
        "density": float((d <= real_radius[None, :]).sum() / (k * len(fake))),
        "coverage": float(np.mean([(d[:, i] <= real_radius[i]).any()
                                   for i in range(len(real))])),
    }


def test_precision_recall_density_coverage_match_the_papers():
    real, fake = _features(8, n=150, d=4), _features(9, n=120, d=4, shift=0.6)
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": Stats.of(real)})
    scores = RunScores("r", {"row_id": np.arange(120), "features.tiny": fake})
    pr, dc = independent_prdc(real, fake, 3), independent_prdc(real, fake, 5)
    assert precision(scores, ctx)["precision"].value == pytest.approx(pr["precision"], rel=1e-6)
    assert recall(scores, ctx)["recall"].value == pytest.approx(pr["recall"], rel=1e-6)
    assert density(scores, ctx)["density"].value == pytest.approx(dc["density"], rel=1e-6)
    assert coverage(scores, ctx)["coverage"].value == pytest.approx(dc["coverage"], rel=1e-6)
    assert 0.1 < pr["precision"] < 0.95 and 0.1 < pr["recall"] < 0.95  # not a trivial case


def test_resampled_prdc_is_the_statistic_of_the_drawn_rows():
    real, fake = _features(10, n=100, d=3), _features(11, n=90, d=3, shift=0.4)
    for k in (3, 5):
        manifolds = Manifolds(fake, real, k)
        counts = np.random.default_rng(k).multinomial(90, np.full(90, 1 / 90), size=4)
        for c in counts:
            drawn, _ = _expand(fake, c)  # precision and density weigh repeats
            distinct = fake[c > 0]  # a manifold is made of the distinct samples
            expected = independent_prdc(real, drawn, k)
            row = c[None, :]
            assert manifolds.precision(row)[0] == pytest.approx(expected["precision"], rel=1e-6)
            assert manifolds.density(row)[0] == pytest.approx(expected["density"], rel=1e-6)
            assert manifolds.coverage(row)[0] == pytest.approx(expected["coverage"], rel=1e-6)
            assert manifolds.recall(row)[0] == pytest.approx(
                independent_prdc(real, distinct, k)["recall"], rel=1e-6)


def test_per_category_fid_and_its_missing_reason():
    real = _features(12, n=200, d=4)
    a, b = _features(12, n=60, d=4, seed_data=1), _features(12, n=60, d=4, shift=1.0, seed_data=2)
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
