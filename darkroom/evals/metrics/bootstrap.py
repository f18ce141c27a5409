"""Bootstrap confidence intervals for a run's metrics and for the difference between two runs.

Resampling works on rows that are already scored (features extracted once): a resample is a
vector of counts, how often each row is drawn, and every metric computes its value from the rows
weighted by those counts. When a prompt has several images the prompts are resampled and their
images kept together (the cluster bootstrap, Davison & Hinkley 1997, section 3.8): images of one
prompt are not independent, and treating them as such would make intervals too narrow. When the
prompts come in classes or categories (a prompt set built with so many prompts per class), they
are resampled within each (the stratified bootstrap, ibid. section 3.2.2), so a resample keeps
the set's balance: corpus metrics react strongly to how many images each class has, and a
resample that changed it would widen the interval with a variation the prompt set, by design,
does not have. A class with a single prompt (`prompts.classes` makes one prompt per class) has
no prompts to draw from: its images are drawn instead, one by one, as the second stage of a
two-stage bootstrap does (ibid. section 3.8); its images differ only in their seeds, so there
the interval counts the seeds as the sample and the prompt as fixed.

The interval is the percentile interval (Efron & Tibshirani 1993, chapter 13) of the resampled
values. For statistics that drift under resampling it is shifted so that the resampled values'
mean falls on the measured value: drawing with replacement repeats rows, and repeats by
themselves move some corpus metrics (FID rises: the resample's features are less spread than the
images'; recall and coverage fall: fewer distinct images span less); the shift takes that drift
out, so the interval is for the metric at this number of images against this reference. Means
over images do not drift and are not shifted (a shift would only add noise, and could lift an
interval off 0 when most resamples sit exactly on it).

Two runs of one job share prompts and seeds: their difference is resampled with the same counts
for both (paired), which removes the prompt-to-prompt variation both runs share. Runs that do
not share them are resampled independently (unpaired).

A difference also gets the p-value of the test that inverts its interval (Efron & Tibshirani
1993, section 16.4): twice the share of resampled differences, shifted as the interval is, on
the far side of 0, so that p < 1 - level exactly when the interval leaves out 0 (quantile
interpolation aside). 500 resamples cannot show a share below 1/500, while a table of many
verdicts needs smaller p-values to be corrected (`multiplicity.py`); where fewer than
`TAIL_RESAMPLES` resamples lie beyond 0, the tail is read from the normal distribution with the
resamples' mean and standard deviation instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Resample = Callable[[np.ndarray], np.ndarray]  # counts (B x n) -> B values


def resample_counts(groups: np.ndarray, resamples: int, seed: int,
                    strata: np.ndarray | None = None) -> np.ndarray:
    """B x n counts: how often each of n rows is drawn in each of B resamples.

    Rows with the same group (prompt) are drawn together: the groups are drawn with replacement,
    as many as there are, and each row takes its group's count. With `strata` (one per row, the
    same for all rows of a group), the groups of each stratum are drawn from that stratum only,
    as many as it has. A stratum (or, without strata, a run) of a single group has its rows drawn
    instead, as many as it has. With one row per group this is the ordinary bootstrap over rows.
    """
    groups = np.asarray(groups).astype(str)
    if resamples < 1 or len(groups) == 0:
        return np.zeros((0, len(groups)), np.int64)
    _, inverse = np.unique(groups, return_inverse=True)
    layer = np.zeros(len(groups), dtype=np.int64)  # the stratum of each row
    if strata is not None:
        _, layer = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(groups)), dtype=np.int64)
    for stratum in np.unique(layer):
        rows = np.flatnonzero(layer == stratum)
        members, unit = np.unique(inverse[rows], return_inverse=True)
        if len(members) == 1:  # one prompt: nothing to draw but its images
            unit = np.arange(len(rows))
        size = int(unit.max()) + 1
        drawn = rng.multinomial(size, np.full(size, 1 / size), size=resamples)
        counts[:, rows] = drawn[:, unit]
    return counts


def resampling_units(groups: np.ndarray, strata: np.ndarray | None = None) -> int:
    """How many independent units `resample_counts` draws: the groups (prompts) of each
    stratum, or its rows where it holds a single group."""
    groups = np.asarray(groups).astype(str)
    layer = (np.zeros(len(groups), int) if strata is None
             else np.unique(np.asarray(strata).astype(str), return_inverse=True)[1])
    total = 0
    for stratum in np.unique(layer):
        members = len(np.unique(groups[layer == stratum]))
        total += members if members > 1 else int((layer == stratum).sum())
    return total


@dataclass(frozen=True)
class Interval:
    """A confidence interval at `level` from `resamples` resampled values."""

    low: float
    high: float
    level: float
    resamples: int


def interval(value: float, replicates: np.ndarray, level: float = 0.95,
             bounds: tuple[float, float] = (-np.inf, np.inf), shift: bool = False
             ) -> Interval | None:
    """The percentile interval of `replicates` (shifted onto `value` when `shift`: statistics
    that drift under resampling), clipped to the metric's range (`bounds`); [value, value] when
    the replicates do not vary (round-off aside); None when fewer than 10 resamples gave a
    finite value."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) < 10 or not np.isfinite(value):
        return None
    if np.ptp(reps) <= 1e-9 * max(1.0, abs(value)):  # the resamples do not vary (round-off)
        return Interval(float(value), float(value), level, len(reps))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [tail, 1.0 - tail]) + (value - reps.mean() if shift else 0.0)
    low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(float(min(low, value)), float(max(high, value)), level, len(reps))


BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


TAIL_RESAMPLES = 10  # fewer resamples beyond 0 than this: the tail is read from a normal


@dataclass(frozen=True)
class Difference:
    """A run's value minus the baseline's, its interval, its p-value and what it means.
    `adjusted` is the p-value after a correction over a table of verdicts (the raw one until
    then); `spread` is the resampled differences' standard deviation (its standard error)."""

    delta: float
    interval: Interval | None
    verdict: str  # BETTER | WORSE | SAME (at the interval's level, or by `adjusted`)
    paired: bool
    p_value: float = float("nan")
    adjusted: float = float("nan")
    spread: float = float("nan")


def verdict(ci: Interval | None, higher_is_better: bool) -> str:
    """Better or worse when the interval of (run - baseline) leaves out 0, else SAME."""
    if ci is None or ci.low <= 0.0 <= ci.high:
        return SAME
    up = ci.low > 0.0
    return BETTER if up == higher_is_better else WORSE


def verdict_at(delta: float, p: float, alpha: float, higher_is_better: bool) -> str:
    """Better or worse when the (adjusted) p-value is below `alpha`, else SAME."""
    if not p < alpha or delta == 0:
        return SAME
    return BETTER if (delta > 0) == higher_is_better else WORSE


def p_values(deltas: np.ndarray, replicates: np.ndarray, shift: bool = False,
             units: int | None = None) -> np.ndarray:
    """Two-sided bootstrap p-values of each `deltas[i]` != 0 from its row of resampled values
    `replicates[i]` (shifted onto the delta when `shift`, as its interval is): twice the share
    at or beyond 0 on the side away from the bulk. Where fewer than `TAIL_RESAMPLES` lie there,
    the tail is read from Student's t with `units` - 1 degrees of freedom (the independent
    units resampled: prompts, or images) and the resamples' spread scaled by
    sqrt(units / (units - 1)) as the t statistic's is; from the normal when `units` is not
    given. NaN where fewer than 10 resamples are finite."""
    from scipy.special import stdtr

    deltas = np.asarray(deltas, dtype=np.float64)
    reps = np.atleast_2d(np.asarray(replicates, dtype=np.float64))
    finite = np.isfinite(reps)
    count = finite.sum(axis=1)
    safe = np.where(finite, reps, 0.0)
    mean = safe.sum(axis=1) / np.maximum(count, 1)
    if shift:
        safe = np.where(finite, safe + (deltas - mean)[:, None], 0.0)
        mean = deltas.copy()
    spread = np.sqrt((np.where(finite, safe - mean[:, None], 0.0) ** 2).sum(axis=1)
                     / np.maximum(count - 1, 1))
    beyond = np.minimum((finite & (safe <= 0)).sum(axis=1), (finite & (safe >= 0)).sum(axis=1))
    empirical = 2 * beyond / np.maximum(count, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if units is not None and units > 2:
            z = np.abs(mean) / (spread * np.sqrt(units / (units - 1)))
            tail = 2 * stdtr(units - 1, -z)
        else:
            z = np.abs(mean) / spread
            tail = np.array([math.erfc(v / math.sqrt(2)) if np.isfinite(v) else 0.0
                             for v in z])
    out = np.minimum(1.0, np.where(beyond >= TAIL_RESAMPLES, empirical, tail))
    still = spread <= 1e-9 * np.maximum(1.0, np.abs(deltas))  # no variation: sure of the sign
    out = np.where(still, np.where(np.abs(deltas) <= 1e-12, 1.0, 0.0), out)
    return np.where((count < 10) | ~np.isfinite(deltas), np.nan, out)


def p_value(delta: float, replicates: np.ndarray, shift: bool = False,
            units: int | None = None) -> float:
    """`p_values` of one difference."""
    return float(p_values(np.array([delta]), np.asarray(replicates)[None, :], shift, units)[0])


def difference(value: float, baseline: float, replicates: np.ndarray,
               baseline_replicates: np.ndarray, higher_is_better: bool, level: float = 0.95,
               paired: bool = True, shift: bool = False, units: int | None = None
               ) -> Difference:
    """(run - baseline) with the percentile interval of the resampled differences and its
    p-value (`units`: the independent units resampled, see `p_values`); each pair of
    replicates comes from the same counts (paired) or from independent ones (unpaired)."""
    delta = value - baseline
    diffs = np.asarray(replicates, dtype=np.float64) - np.asarray(baseline_replicates,
                                                                  dtype=np.float64)
    ci = interval(delta, diffs, level, shift=shift)
    p = p_value(delta, diffs, shift, units)
    finite = diffs[np.isfinite(diffs)]
    spread = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
    return Difference(delta, ci, verdict(ci, higher_is_better), paired, p, p, spread)
