"""Which pair a rater sees next: an active design that spends votes where the order of two runs
is still uncertain, balanced over prompts.

1. Fit the model (`bt.py`) to the votes so far on the round's first question (refitted at most
   once a second).
2. Weight each pair of runs (a, b) by the probability, under that fit, that their order is the
   wrong way round: Φ(-|θ_a - θ_b| / se), with se from the fit's information (1/2 for runs with
   no votes yet), plus a floor (`FLOOR`) so that no pair of runs starves.
3. Draw an order of the pairs of runs by those weights (weighted sampling without replacement,
   Efraimidis & Spirakis 2006: the largest u^(1/w) first) and take the first that has a key the
   rater has not been shown.
4. Of that pair's keys (prompt_id, sample_idx), show the one shown least often for this pair of
   runs, then the one whose prompt was shown least often in any pair, at random among equals.
5. Draw the sides at random.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import stats

from darkroom.evals.arena import bt
from darkroom.evals.arena.source import Runs
from darkroom.evals.arena.store import VoteStore

FLOOR = 0.02
REFIT_S = 1.0


@dataclass(frozen=True)
class Choice:
    """A pair to show: (prompt_id, sample_idx, run_a, run_b), the run on the left, and which
    showing of the pair to this rater it is (0 the first)."""

    pair: tuple[str, int, str, str]
    left_run: str
    showing: int


def uncertainty(runs: list[str], tally: list[tuple[str, str, str, int]]
                ) -> dict[tuple[str, str], float]:
    """For each pair of runs (a < b), the probability under the fit of `tally` (left, right,
    answer, count) that their order is the wrong way round."""
    index = {r: i for i, r in enumerate(runs)}
    tally = [t for t in tally if t[0] in index and t[1] in index]
    out = {(a, b): 0.5 for i, a in enumerate(runs) for b in runs[i + 1:]}
    if not tally:
        return out
    ordered = sorted({(index[left], index[right]) for left, right, _, _ in tally})
    where = {p: i for i, p in enumerate(ordered)}
    counts = np.zeros((1, len(ordered), 3))
    for left, right, answer, n in tally:
        counts[0, where[index[left], index[right]], bt.OUTCOMES[answer]] += n
    found = bt.fit(counts, np.array(ordered), len(runs))
    for a, b in out:
        i, j = index[a], index[b]
        se = float(found.difference_se(i, j)[0])
        delta = float(found.theta[0, i] - found.theta[0, j])
        out[a, b] = float(stats.norm.cdf(-abs(delta) / se)) if se > 0 else 0.0
    return out


class Selector:
    """The next pair for a rater in one round (thread-safe). How often each pair was shown is
    read from the store once and then counted here (it only steers the balance: another process
    serving the same round makes it approximate, never wrong)."""

    def __init__(self, runs: Runs, store: VoteStore, round_name: str, question: str,
                 repeats: bool = False, seed: int | None = None) -> None:
        self.runs, self.store, self.round, self.question = runs, store, round_name, question
        self.repeats = repeats
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._weights: dict[tuple[str, str], float] = {}
        self._fitted_at = -np.inf
        self._shown: Counter | None = None  # (prompt_id, sample_idx, run_a, run_b) -> showings
        self._prompts: Counter = Counter()

    def weights(self) -> dict[tuple[str, str], float]:
        """The current uncertainty of each pair of runs (refitted at most every REFIT_S)."""
        if time.monotonic() - self._fitted_at > REFIT_S:
            self._weights = uncertainty(self.runs.ids, self.store.tally(self.round,
                                                                        self.question))
            self._fitted_at = time.monotonic()
        return self._weights

    def shown(self, pair: tuple[str, int, str, str]) -> None:
        """Count a showing of `pair` (a ticket was issued)."""
        with self._lock:
            if self._shown is not None:
                self._shown[pair] += 1
                self._prompts[pair[0]] += 1

    def next(self, rater: str, seen: Counter) -> Choice | None:
        """The pair to show `rater` next, given how often they have seen each pair; None when
        there is none left for them."""
        with self._lock:
            if self._shown is None:
                self._shown = self.store.showings(self.round)
                for (prompt_id, *_), n in self._shown.items():
                    self._prompts[prompt_id] += n
            pairs = self.runs.run_pairs()
            weights = self.weights()
            w = np.array([weights.get(p, 0.5) + FLOOR for p in pairs])
            order = np.argsort(-(self.rng.random(len(pairs)) ** (1.0 / w)))
            for i in order:
                a, b = pairs[i]
                keys = self.runs.shared(a, b)
                times = np.array([seen[(p, s, a, b)] for p, s in keys], dtype=np.int64)
                if not len(keys) or (not self.repeats and times.min() > 0):
                    continue
                by_pair = np.array([self._shown[(p, s, a, b)] for p, s in keys])
                by_prompt = np.array([self._prompts[p] for p, _ in keys])
                best = np.lexsort((self.rng.random(len(keys)), by_prompt, by_pair, times))[0]
                prompt_id, sample_idx = keys[best]
                left = a if self.rng.random() < 0.5 else b
                return Choice((prompt_id, sample_idx, a, b), left, int(times[best]))
            return None
