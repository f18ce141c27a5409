"""Many verdicts at once: bootstrap p-values that match the intervals, the adjustments against
independent computations, and the error rates they promise, by simulating whole verdict tables
(23 runs x 7 metrics) where nothing, or only some rows, differ."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from darkroom.evals.metrics.bootstrap import (
    BETTER,
    SAME,
    WORSE,
    difference,
    interval,
    p_value,
    p_values,
    resample_counts,
    verdict_at,
)
from darkroom.evals.metrics.multiplicity import CORRECTIONS, adjust, benjamini_hochberg, holm

TESTS = 23 * 7  # the quickstart's table: 23 runs against a baseline, 7 metrics


def _holm_by_definition(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm (1979) as written: reject the sorted hypotheses while p_(i) <= alpha / (m - i)."""
    order = np.argsort(p)
    rejected = np.zeros(len(p), bool)
    for i, j in enumerate(order):
        if p[j] > alpha / (len(p) - i):
            break
        rejected[j] = True
    return rejected


def test_adjustments_match_independent_computations():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10)])
        assert np.allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
        for alpha in (0.01, 0.05, 0.1):
            assert ((holm(p) <= alpha) == _holm_by_definition(p, alpha)).all()
    with_gaps = np.array([0.01, np.nan, 0.02, 0.9])
    out = adjust(with_gaps, "bh")  # a row with no test is not counted among the tests
    assert np.isnan(out[1]) and np.allclose(out[[0, 2, 3]], benjamini_hochberg([0.01, 0.02, 0.9]))
    assert (adjust(with_gaps[[0, 2, 3]], "none") == with_gaps[[0, 2, 3]]).all()
    assert "161 tests" in CORRECTIONS["bh"].header(TESTS, 0.05)
    assert "about 8.1" in CORRECTIONS["none"].header(TESTS, 0.05)


def test_p_value_inverts_the_interval_and_orders_the_far_tail():
    """p < 5% exactly when the 95% interval leaves out 0 (away from the boundary), and far
    beyond every resample the p-values still order the differences."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        reps = rng.normal(rng.uniform(-4, 4), 1.0, 500)
        delta = float(reps.mean())
        ci = interval(delta, reps)
        p = p_value(delta, reps)
        outside = not ci.low <= 0 <= ci.high
        share = min((reps <= 0).mean(), (reps >= 0).mean())
        if abs(share - 0.025) > 0.004:  # not on the boundary itself
            assert outside == (p < 0.05), (trial, p, ci)
    far = [p_value(d, rng.normal(d, 1.0, 500)) for d in (5.0, 6.0, 8.0)]
    assert 0 < far[2] < far[1] < far[0] < 1 / 500  # below what 500 resamples can count
    ties = np.r_[np.zeros(300), np.full(200, 0.01)]  # a rate that mostly does not move
    assert p_value(0.004, ties) == 1.0
    assert p_value(0.0, np.zeros(50)) == 1.0 and p_value(0.2, np.full(50, 0.2)) == 0.0
    assert np.isnan(p_value(1.0, np.ones(5)))
    assert verdict_at(0.3, 0.01, 0.05, higher_is_better=True) == BETTER
    assert verdict_at(0.3, 0.01, 0.05, higher_is_better=False) == WORSE
    assert verdict_at(0.3, 0.2, 0.05, higher_is_better=True) == SAME
    d = difference(1.0, 0.0, rng.normal(1.0, 0.1, 400), np.zeros(400), True)
    assert d.p_value == d.adjusted < 1e-6 and d.spread == pytest.approx(0.1, rel=0.15)


def _tables(repetitions: int, effects: np.ndarray, images: int = 100, resamples: int = 200,
            seed: int = 0) -> np.ndarray:
    """The raw p-values of `repetitions` verdict tables (repetitions x len(effects)): each row a
    paired comparison of per-image means over `images` images (the run's minus the baseline's,
    resampled with the same counts for both, as `compare --baseline` does) whose true
    difference is `effects[row]` (0: nothing to find); one counts matrix per table."""
    rng = np.random.default_rng(seed)
    out = np.empty((repetitions, len(effects)))
    for r in range(repetitions):
        counts = resample_counts(np.arange(images), resamples, seed=r).astype(np.float64)
        diffs = rng.normal(size=(images, len(effects))) + effects[None, :]
        means = diffs.mean(axis=0)
        replicates = counts @ diffs / counts.sum(axis=1, keepdims=True)  # B x tests
        out[r] = p_values(means, replicates.T, units=images)
    return out


def _rates(p: np.ndarray, null: np.ndarray, method: str, alpha: float = 0.05):
    """(false-discovery rate, family-wise error rate, share of true effects found)."""
    called = np.stack([adjust(row, method) < alpha for row in p])
    false = (called & null[None, :]).sum(axis=1)
    fdr = np.mean(false / np.maximum(called.sum(axis=1), 1))
    found = (called & ~null[None, :]).sum() / max(1, (~null).sum() * len(p))
    return fdr, np.mean(false > 0), found


def test_null_tables_call_about_one_test_in_twenty_unless_corrected():
    """23 runs x 7 metrics and nothing to find, 600 times: uncorrected, about 8 verdicts a table
    (5% of 161) and nearly every table has some; Benjamini-Hochberg and Holm keep the share of
    tables with any false verdict at 5% (all verdicts are false here, so that share is both
    the false-discovery and the family-wise rate)."""
    effects = np.zeros(TESTS)
    p = _tables(600, effects)
    null = effects == 0
    per_test = np.mean(p < 0.05)
    assert 0.04 <= per_test <= 0.065, per_test
    assert 6 <= (p < 0.05).sum(axis=1).mean() <= 10.5
    assert _rates(p, null, "none")[1] > 0.95
    for method in ("bh", "holm"):
        fdr, fwer, _ = _rates(p, null, method)
        assert fdr == fwer and fwer <= 0.075, (method, fwer)  # 5% + 3 standard errors


def test_a_table_with_real_differences_keeps_its_false_discovery_rate():
    """21 of the 161 rows differ (as a sweep's strong settings would); over 400 tables the
    Benjamini-Hochberg verdicts' share of false ones stays at or below 5% x 140/161 (its bound)
    while finding most real differences; Holm keeps any false verdict rare and finds fewer."""
    effects = np.zeros(TESTS)
    effects[:21] = np.tile([0.4, 0.5, 0.6], 7)
    null = effects == 0
    p = _tables(400, effects, seed=1)
    fdr, _, found_bh = _rates(p, null, "bh")
    bound = 0.05 * null.mean()
    assert fdr <= bound + 0.015, (fdr, bound)
    _, fwer, found_holm = _rates(p, null, "holm")
    assert fwer <= 0.075 and found_bh > 0.7 and found_holm < found_bh
    uncorrected, _, _ = _rates(p, null, "none")
    assert uncorrected > 2 * bound  # what the correction takes out


@pytest.mark.parametrize(("method", "alpha"), list(itertools.product(["bh", "holm"], [0.05])))
def test_adjusted_verdicts_are_never_more_than_raw(method, alpha):
    p = np.random.default_rng(3).uniform(size=200) ** 3
    assert ((adjust(p, method) < alpha) <= (p < alpha)).all()
