"""Many verdicts at once: the p-values of a whole table of comparisons adjusted together.

A table of 23 runs x 7 metrics is 161 tests; at 5% each, about eight of them come out "better"
or "worse" by chance alone when nothing differs. Two corrections keep that in check:

- `bh`: Benjamini & Hochberg (1995), the step-up procedure: among the verdicts it calls, the
  expected share of false ones (the false-discovery rate) is at most alpha. It holds for
  independent tests and for positively dependent ones (Benjamini & Yekutieli 2001), as the
  rows of one table are (they share the baseline).
- `holm`: Holm (1979), the step-down Bonferroni procedure: the chance of even one false verdict
  in the table (the family-wise error rate) is at most alpha, under any dependence.

Each gives adjusted p-values (a test is called at level alpha exactly when its adjusted p-value
is below alpha), so the table keeps the raw and the adjusted one side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: min over j >= i of m p_(j) / j, at most 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm adjusted p-values: max over j <= i of (m - j + 1) p_(j), at most 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (m - np.arange(m))
    out = np.empty(m)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


@dataclass(frozen=True)
class Correction:
    """A way to adjust a table's p-values: what it controls, and how it is said."""

    name: str
    controls: str  # the rate it keeps at alpha, as the table's header says it
    author: str
    adjust: Callable[[np.ndarray], np.ndarray]

    def header(self, tests: int, alpha: float) -> str:
        """What the table's verdicts hold, for its header."""
        if self.adjust is _unadjusted:
            return (f"verdicts at {alpha:.0%} per test, {tests} tests, no correction: about "
                    f"{alpha * tests:.1f} of them may be called by chance alone")
        return (f"verdicts keep the {self.controls} at {alpha:.0%} over the {tests} tests of the "
                f"table ({self.author})")


def _unadjusted(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, dtype=np.float64).copy()


CORRECTIONS: dict[str, Correction] = {
    "bh": Correction("bh", "false-discovery rate", "Benjamini-Hochberg", benjamini_hochberg),
    "holm": Correction("holm", "family-wise error rate", "Holm", holm),
    "none": Correction("none", "per-test error rate", "none", _unadjusted),
}


def adjust(p_values: np.ndarray, method: str) -> np.ndarray:
    """The p-values adjusted by `method` (a key of CORRECTIONS); NaN ones (no test) stay NaN
    and are not counted among the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    tested = np.isfinite(p)
    out[tested] = CORRECTIONS[method].adjust(p[tested])
    return out
