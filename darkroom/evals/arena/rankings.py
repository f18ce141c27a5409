"""A round's results from its votes: for each question, Bradley-Terry strengths with intervals
over prompts and raters, the win-rate matrix, agreement between raters, the position-bias check,
and each judge's agreement with the human majority.

A tie and "both bad" are both "no preference" to the strengths (Davidson's ties); "both bad" is
also counted per run. Strengths are on the log scale, 0 for the average run: a run 1.0 above
another wins about e^1 = 2.7 times as often as it loses against it (ties aside).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from darkroom.evals.arena import bt
from darkroom.evals.arena.agreement import (
    Estimate,
    PositionBias,
    agreement,
    krippendorff_alpha,
    position_bias,
)

LEVEL = 0.95
RESAMPLES = 300  # per resampling factor (prompts, raters, votes)
NO_PREFERENCE = "none"
Item = tuple[str, int, str, str]  # (prompt_id, sample_idx, run_a, run_b)
Preferences = Mapping[Item, str]  # item -> run_a's or run_b's id, or NO_PREFERENCE


@dataclass(frozen=True)
class Strength:
    """One run's strength with its interval and its votes."""

    run: str
    name: str
    strength: float
    low: float
    high: float
    votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int


@dataclass(frozen=True)
class Judge:
    """A judge's agreement with the human majority, on the items both decided."""

    name: str
    kind: str  # per-image | pairwise | rater
    agreement: Estimate


@dataclass
class QuestionResult:
    """Everything the votes on one question say."""

    question: str
    text: str
    votes: int
    raters: int
    prompts: int
    strengths: list[Strength] = field(default_factory=list)  # best first
    win_rate: np.ndarray | None = None  # runs x runs, in `Results.runs` order
    compared: np.ndarray | None = None
    tie: float = float("nan")  # Davidson's ν
    order_effect: tuple[float, float, float] | None = None  # γ with its interval
    position: PositionBias | None = None
    alpha: Estimate | None = None
    judges: list[Judge] = field(default_factory=list)


@dataclass
class Results:
    """A round's results, per question."""

    round: str
    runs: list[str]
    names: dict[str, str]
    questions: list[QuestionResult]
    per_rater: dict[str, int]


def preferred(vote: Mapping[str, Any]) -> str:
    """The run a vote preferred, or NO_PREFERENCE."""
    if vote["answer"] == "left":
        return vote["left_run"]
    if vote["answer"] == "right":
        return vote["right_run"]
    return NO_PREFERENCE


def item_of(vote: Mapping[str, Any]) -> Item:
    """The pair a vote is about, whatever its sides."""
    a, b = sorted((vote["left_run"], vote["right_run"]))
    return vote["prompt_id"], int(vote["sample_idx"]), a, b


def first_votes(votes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each rater's first vote on each item (repeat showings left out)."""
    seen: set[tuple[str, Item]] = set()
    out = []
    for vote in votes:
        key = (vote["rater"], item_of(vote))
        if key not in seen:
            seen.add(key)
            out.append(vote)
    return out


def majority(prefs: Sequence[str]) -> str | None:
    """The preference with strictly the most votes, if it is a run; None otherwise."""
    counts = Counter(prefs).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return None if counts[0][0] == NO_PREFERENCE else counts[0][0]


def judge_agreement(name: str, kind: str, judged: Preferences,
                    humans: Mapping[Item, str], resamples: int, seed: int) -> Judge:
    """How often `judged` picks the human majority's run, over the items both have (a judge
    with no preference on an item disagrees)."""
    items = [i for i in humans if i in judged]
    agrees = np.array([judged[i] == humans[i] for i in items], dtype=float)
    return Judge(name, kind, agreement(agrees, [i[0] for i in items], resamples, seed))


def rater_agreement(votes: Sequence[Mapping[str, Any]], resamples: int, seed: int) -> Judge:
    """How often one rater picks the majority of the others' run (items with a decisive
    majority of at least two other raters): the ceiling a judge can be held to."""
    by_item: dict[Item, list[tuple[str, str]]] = defaultdict(list)
    for vote in votes:
        by_item[item_of(vote)].append((vote["rater"], preferred(vote)))
    agrees, groups = [], []
    for item, given in by_item.items():
        for rater, pref in given:
            others = [p for r, p in given if r != rater]
            wanted = majority(others) if len(others) >= 2 else None
            if wanted is not None:
                agrees.append(pref == wanted)
                groups.append(item[0])
    return Judge("a rater vs the others", "rater",
                 agreement(np.array(agrees, float), groups, resamples, seed))


def question_result(question: str, text: str, votes: Sequence[Mapping[str, Any]],
                    runs: list[str], names: Mapping[str, str],
                    judges: Mapping[str, tuple[str, Preferences]],
                    resamples: int = RESAMPLES, seed: int = 0) -> QuestionResult:
    """The results of one question's votes (`judges`: name -> (kind, preferences))."""
    index = {r: i for i, r in enumerate(runs)}
    votes = [v for v in votes if v["left_run"] in index and v["right_run"] in index]
    out = QuestionResult(question, text, len(votes), len({v["rater"] for v in votes}),
                         len({v["prompt_id"] for v in votes}))
    if not votes:
        return out
    coded = bt.Votes.of(len(runs), [index[v["left_run"]] for v in votes],
                        [index[v["right_run"]] for v in votes],
                        [bt.OUTCOMES[v["answer"]] for v in votes],
                        [v["prompt_id"] for v in votes], [v["rater"] for v in votes])
    found = bt.fit_votes(coded)
    se = bt.standard_errors(coded, resamples, seed)
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    theta = found.theta[0]
    tallies = _tallies(votes)
    out.strengths = sorted(
        (Strength(r, names.get(r, r), float(theta[i]), float(theta[i] - z * se["theta"][i]),
                  float(theta[i] + z * se["theta"][i]), **tallies[r])
         for r, i in index.items()), key=lambda s: -s.strength)
    out.win_rate, out.compared = bt.win_rates(coded)
    out.tie = float(np.exp(found.tau[0]))
    eta, eta_se = float(found.eta[0]), float(se["eta"])
    out.order_effect = (float(np.exp(eta)), float(np.exp(eta - z * eta_se)),
                        float(np.exp(eta + z * eta_se)))
    out.position = position_bias(np.array([v["answer"] == "left" for v in votes
                                           if v["answer"] in ("left", "right")]))
    once = first_votes(votes)
    out.alpha = _alpha(once, resamples, seed)
    humans = {}
    by_item: dict[Item, list[str]] = defaultdict(list)
    for vote in once:
        by_item[item_of(vote)].append(preferred(vote))
    for item, prefs in by_item.items():
        wanted = majority(prefs)
        if wanted is not None:
            humans[item] = wanted
    out.judges = [judge_agreement(name, kind, prefs, humans, resamples, seed)
                  for name, (kind, prefs) in judges.items()]
    out.judges.append(rater_agreement(once, resamples, seed))
    return out


def _tallies(votes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("votes", "wins", "losses", "ties", "both_bad"), 0))
    for vote in votes:
        pref = preferred(vote)
        for run in (vote["left_run"], vote["right_run"]):
            mine = out[run]
            mine["votes"] += 1
            if pref == NO_PREFERENCE:
                mine["both_bad" if vote["answer"] == "both_bad" else "ties"] += 1
            else:
                mine["wins" if pref == run else "losses"] += 1
    return out


ALPHA_CODES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}


def _alpha(votes: Sequence[Mapping[str, Any]], resamples: int, seed: int) -> Estimate:
    """Krippendorff's alpha over the items, each rater's answer read as which run of the pair
    (by name order) it preferred, a tie, or both bad."""
    values, units = [], []
    for vote in votes:
        item = item_of(vote)
        pref = preferred(vote)
        code = vote["answer"] if pref == NO_PREFERENCE else ("a" if pref == item[2] else "b")
        values.append(ALPHA_CODES[code])
        units.append("\0".join(map(str, item)))
    return krippendorff_alpha(np.array(values), np.array(units), resamples, seed)


def as_dict(value: Any) -> Any:
    """Results (or any part of them) as plain JSON data: arrays as lists, NaN as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return as_dict(value.tolist())
    if isinstance(value, dict):
        return {str(k): as_dict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_dict(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
