"""How far votes can be trusted: agreement between raters (Krippendorff's alpha), a position-bias
check, and how often a judge (an automatic scorer, or one rater) agrees with the human majority.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from darkroom.evals.metrics.bootstrap import Interval, interval, resample_counts

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A value with its interval (None when it cannot be resampled) and how many units it
    stands on."""

    value: float
    interval: Interval | None
    units: int


def _coincidences(values: np.ndarray, units: np.ndarray, categories: int) -> np.ndarray:
    """(U, c, c): each unit's coincidence matrix (Krippendorff 2004, section 11.3): every ordered
    pair of values from different coders of a unit, weighted 1 / (m_u - 1); units with one value
    add nothing."""
    unit_ids, unit = np.unique(units, return_inverse=True)
    counts = np.zeros((len(unit_ids), categories))
    np.add.at(counts, (unit, values), 1.0)
    m = counts.sum(axis=1)
    pairs = counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(categories)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((m > 1)[:, None, None], pairs / (m - 1)[:, None, None], 0.0)


def _alpha(coincidence: np.ndarray) -> np.ndarray:
    """Nominal alpha from (..., c, c) coincidence matrices: 1 - observed / expected disagreement."""
    totals = coincidence.sum(axis=-1)  # n_c
    n = totals.sum(axis=-1)
    observed = n - np.trace(coincidence, axis1=-2, axis2=-1)
    expected = (n ** 2 - (totals ** 2).sum(axis=-1)) / np.where(n > 1, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected > 0, 1.0 - observed / expected, np.nan)


def krippendorff_alpha(values: np.ndarray, units: np.ndarray, resamples: int = 1000,
                       seed: int = 0) -> Estimate:
    """Krippendorff's alpha for nominal values (Krippendorff 2004, "Content Analysis", ch. 11):
    `values[i]` is one coder's category code for `units[i]`. The interval resamples units."""
    values = np.asarray(values, np.int64)
    if not len(values):
        return Estimate(float("nan"), None, 0)
    per_unit = _coincidences(values, np.asarray(units).astype(str), int(values.max()) + 1)
    paired = per_unit.sum(axis=(1, 2)) > 0
    per_unit = per_unit[paired]
    value = float(_alpha(per_unit.sum(axis=0)))
    if not len(per_unit) or resamples < 1:
        return Estimate(value, None, len(per_unit))
    counts = resample_counts(np.arange(len(per_unit)), resamples, seed)
    flat = per_unit.reshape(len(per_unit), -1)
    replicates = _alpha((counts @ flat).reshape(resamples, *per_unit.shape[1:]))
    return Estimate(value, interval(value, replicates, LEVEL, (-1.0, 1.0)), len(per_unit))


@dataclass(frozen=True)
class PositionBias:
    """Among votes that picked a side: how often it was the left one, its exact binomial
    interval, and the two-sided p-value against 50%. Sides are drawn at random, so without a
    position bias the left share is 50% whatever the runs' strengths."""

    left: int
    decided: int
    share: float
    interval: tuple[float, float] | None
    p_value: float
    flagged: bool


def position_bias(chose_left: np.ndarray, alpha: float = 0.05) -> PositionBias:
    """The check on booleans (True: the left image was chosen), flagged at p < `alpha`."""
    chose_left = np.asarray(chose_left, bool)
    left, decided = int(chose_left.sum()), len(chose_left)
    if not decided:
        return PositionBias(0, 0, float("nan"), None, float("nan"), False)
    test = stats.binomtest(left, decided, 0.5)
    ci = test.proportion_ci(LEVEL, method="exact")
    return PositionBias(left, decided, left / decided, (ci.low, ci.high), float(test.pvalue),
                        bool(test.pvalue < alpha))


def agreement(agrees: np.ndarray, groups: np.ndarray, resamples: int = 1000,
              seed: int = 0) -> Estimate:
    """The share of items where a judge agrees with the human majority, with an interval that
    resamples the items' groups (prompts) with their items (a cluster bootstrap)."""
    agrees = np.asarray(agrees, np.float64)
    if not len(agrees):
        return Estimate(float("nan"), None, 0)
    value = float(agrees.mean())
    counts = resample_counts(np.asarray(groups).astype(str), resamples, seed)
    if not len(counts):
        return Estimate(value, None, len(agrees))
    replicates = (counts @ agrees) / np.maximum(counts.sum(axis=1), 1)
    return Estimate(value, interval(value, replicates, LEVEL, (0.0, 1.0)), len(agrees))
