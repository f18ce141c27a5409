"""Bradley-Terry strengths with ties and a position effect, fit by Newton's method, and their
bootstrap intervals resampled over prompts and raters.

Run i's image shown on the left against run j's on the right is preferred, tied or beaten with
probabilities proportional to

    left: γ·π_i        right: π_j        tie: ν·sqrt(γ·π_i·π_j)

Bradley & Terry (1952) for the wins, Davidson (1970) for the ties, Davidson & Beaver (1977) for
the order effect γ (the left side's advantage, 1 when there is none). In logs (θ = log π,
η = log γ, τ = log ν) each outcome's log-odds is linear in the parameters: the model is a
multinomial logit, its log-likelihood concave, and Newton's method converges in a few steps. A
small ridge on θ keeps a run that never loses at a finite strength and puts the scale's origin at
the average run (Σθ = 0).

Votes are crossed by prompt and by rater: a prompt can favour one run for every rater, a rater
can favour one run on every prompt. Intervals must hold for other prompts and other raters, so
both are resampled. Resampling both at once (the pigeonhole bootstrap, Owen 2007, "The pigeonhole
bootstrap", Ann. Appl. Stat.) counts the vote-to-vote noise about three times over; instead three
bootstraps are run, by prompt, by rater and by single vote, and their variances combined as
Vp + Vr - Vv, which under a two-way random-effects model estimates prompt, rater and vote
variance once each (never less than the larger of Vp and Vr). The interval is θ ± 1.96 standard
errors. `standard_errors` does this; the recovery test in tests/evals/arena shows it covering
with and without raters of their own taste.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

LEFT, RIGHT, TIE = 0, 1, 2
# a rater's answer as an outcome: "both bad" prefers neither image, like a tie
OUTCOMES = {"left": LEFT, "right": RIGHT, "tie": TIE, "both_bad": TIE}
RIDGE = 1e-2  # on θ: about a hundredth of one vote's information
RIDGE_OTHER = 1e-4  # on η and τ: keeps τ finite when no vote is a tie
MAX_STEP = 2.0  # a Newton step is clipped to this (in log units) per parameter


@dataclass(frozen=True)
class Votes:
    """Votes as integer codes: the ordered pair shown (`pairs[pair]` = (left run, right run)),
    the outcome (LEFT, RIGHT, TIE), and each vote's prompt and rater."""

    runs: int
    pairs: np.ndarray  # (P, 2) run indices: left, right
    pair: np.ndarray  # (V,) index into pairs
    outcome: np.ndarray  # (V,)
    prompt: np.ndarray  # (V,) codes 0..prompts-1
    rater: np.ndarray  # (V,) codes 0..raters-1

    @classmethod
    def of(cls, runs: int, left: np.ndarray, right: np.ndarray, outcome: np.ndarray,
           prompt: np.ndarray, rater: np.ndarray) -> Votes:
        """Votes from per-vote run indices and any hashable prompt and rater labels."""
        left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        ordered = np.stack([left, right], axis=1) if len(left) else np.zeros((0, 2), np.int64)
        pairs, pair = np.unique(ordered, axis=0, return_inverse=True)
        return cls(runs, pairs.reshape(-1, 2), pair.reshape(-1),
                   np.asarray(outcome, np.int64), _codes(prompt), _codes(rater))

    def counts(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(B, P, 3) outcome counts per ordered pair, each vote weighted by `weights` (B, V);
        (1, P, 3) unweighted."""
        if weights is None:
            weights = np.ones((1, len(self.pair)))
        cells = self.pair * 3 + self.outcome
        onehot = sparse.csr_matrix((np.ones(len(cells)), (np.arange(len(cells)), cells)),
                                   shape=(len(cells), len(self.pairs) * 3))
        return np.asarray((onehot.T @ weights.T).T).reshape(len(weights), len(self.pairs), 3)


def _codes(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not len(labels):
        return np.zeros(0, np.int64)
    return np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)


def design(pairs: np.ndarray, runs: int) -> np.ndarray:
    """(P, 3, runs + 2): each outcome's log-odds as a linear function of (θ, η, τ)."""
    count, eta, tau = len(pairs), runs, runs + 1
    x = np.zeros((count, 3, runs + 2))
    rows = np.arange(count)
    x[rows, LEFT, pairs[:, 0]] += 1.0
    x[:, LEFT, eta] = 1.0
    x[rows, RIGHT, pairs[:, 1]] += 1.0
    x[:, TIE] = (x[:, LEFT] + x[:, RIGHT]) / 2.0
    x[:, TIE, tau] = 1.0
    return x


@dataclass(frozen=True)
class Fit:
    """Fitted parameters for each of B count tables: θ (B, runs), η and τ (B,), and the
    information matrix (B, p, p) for standard errors."""

    theta: np.ndarray
    eta: np.ndarray
    tau: np.ndarray
    information: np.ndarray

    @property
    def params(self) -> np.ndarray:
        """(B, runs + 2): θ, η, τ side by side (a starting point for another fit)."""
        return np.column_stack([self.theta, self.eta, self.tau])

    def difference_se(self, a: int, b: int) -> np.ndarray:
        """The standard error of θ_a - θ_b (B,), from the inverse information."""
        contrast = np.zeros(self.information.shape[-1])
        contrast[a], contrast[b] = 1.0, -1.0
        solved = np.linalg.solve(self.information, np.broadcast_to(
            contrast, self.information.shape[:-1])[..., None])[..., 0]
        return np.sqrt(np.maximum(solved @ contrast, 0.0))


def fit(counts: np.ndarray, pairs: np.ndarray, runs: int, start: np.ndarray | None = None,
        iterations: int = 100, tolerance: float = 1e-8) -> Fit:
    """Maximum penalised likelihood of the model for each (P, 3) table of `counts` (B, P, 3),
    all B at once, from `start` (runs + 2 parameters: θ, η, τ; zeros by default)."""
    x = design(pairs, runs)
    outer = np.einsum("poq,por->poqr", x, x).reshape(len(pairs) * 3, -1)
    params = runs + 2
    penalty = np.full(params, RIDGE_OTHER)
    penalty[:runs] = RIDGE
    total = counts.sum(axis=-1)  # (B, P)
    beta = np.zeros((len(counts), params)) if start is None else np.tile(start, (len(counts), 1))
    for _ in range(iterations):
        logits = np.einsum("poq,bq->bpo", x, beta)
        prob = np.exp(logits - logits.max(axis=-1, keepdims=True))
        prob /= prob.sum(axis=-1, keepdims=True)
        grad = np.einsum("bpo,poq->bq", counts - total[..., None] * prob, x) - penalty * beta
        weighted = (total[..., None] * prob).reshape(len(counts), -1)
        mean_x = np.einsum("bpo,poq->bpq", prob, x)
        info = ((weighted @ outer).reshape(len(counts), params, params)
                - np.einsum("bpq,bpr->bqr", total[..., None] * mean_x, mean_x)
                + np.diag(penalty))
        step = np.clip(np.linalg.solve(info, grad[..., None])[..., 0], -MAX_STEP, MAX_STEP)
        beta += step
        if np.abs(step).max(initial=0.0) < tolerance:
            break
    return Fit(beta[:, :runs], beta[:, runs], beta[:, runs + 1], info)


def fit_votes(votes: Votes) -> Fit:
    """The fit of all the votes (B = 1)."""
    return fit(votes.counts(), votes.pairs, votes.runs)


FACTORS = ("prompt", "rater", "vote")


def resample_weights(votes: Votes, factor: str, resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(B, V) weights: the units of `factor` (prompts, raters or single votes) drawn with
    replacement, each vote weighted by how often its unit was drawn."""
    codes = np.arange(len(votes.pair)) if factor == "vote" else getattr(votes, factor)
    units = int(codes.max()) + 1 if len(codes) else 0
    drawn = rng.multinomial(units, np.full(units, 1.0 / units), size=resamples)
    return drawn[:, codes].astype(np.float64)


def bootstrap(votes: Votes, factor: str, resamples: int, seed: int = 0,
              block: int = 100) -> Fit:
    """The fits of `resamples` resamples of the votes by `factor` (in blocks of `block`, so
    memory stays at block x votes)."""
    rng = np.random.default_rng([seed, FACTORS.index(factor)])
    whole = fit_votes(votes).params[0]  # resamples converge from here in a few steps
    fits = []
    for first in range(0, resamples, block):
        weights = resample_weights(votes, factor, min(block, resamples - first), rng)
        fits.append(fit(votes.counts(weights), votes.pairs, votes.runs, whole))
    return Fit(*(np.concatenate([getattr(f, name) for f in fits]) for name in
                 ("theta", "eta", "tau", "information")))


def standard_errors(votes: Votes, resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard errors of θ (per run) and η over prompts and raters: Vp + Vr - Vv, the
    bootstrap variances by prompt, by rater and by vote (at least the larger of Vp and Vr)."""
    found = {f: bootstrap(votes, f, resamples, seed) for f in FACTORS}
    out = {}
    for name in ("theta", "eta"):
        var = {f: np.var(getattr(found[f], name), axis=0) for f in FACTORS}
        combined = var["prompt"] + var["rater"] - var["vote"]
        out[name] = np.sqrt(np.maximum(combined, np.maximum(var["prompt"], var["rater"])))
    return out


def win_rates(votes: Votes) -> tuple[np.ndarray, np.ndarray]:
    """(runs x runs) share of i's comparisons with j that i won, a tie counting a half, and the
    number of those comparisons (NaN where there are none), whichever side each was shown on."""
    counts = votes.counts()[0]
    won = np.zeros((votes.runs, votes.runs))
    seen = np.zeros((votes.runs, votes.runs))
    for (left, right), (lw, rw, tie) in zip(votes.pairs, counts, strict=True):
        won[left, right] += lw + tie / 2
        won[right, left] += rw + tie / 2
        seen[left, right] += lw + rw + tie
        seen[right, left] += lw + rw + tie
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, won / seen, np.nan), seen
