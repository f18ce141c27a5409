"""The rankings math: Bradley-Terry-Davidson recovery by simulation (ties, a position bias, raters
of their own taste), the fit against a general-purpose optimiser, Krippendorff's alpha on its
published example, the position-bias check and judge agreement. Numpy only, a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from darkroom.evals.arena import bt
from darkroom.evals.arena.agreement import agreement, krippendorff_alpha, position_bias
from darkroom.evals.arena.rankings import majority, question_result
from tests.evals.arena.simulation import simulate

THETA = np.array([0.8, 0.3, 0.0, -0.4, -0.7])
THETA = THETA - THETA.mean()  # the model's origin: the average run


def recover(taste: float, gamma: float, repetitions: int = 20, resamples: int = 100):
    """Per repetition: whether each run's 95% interval covered its strength, whether prompts
    alone would have, the position check, and the order effect's interval."""
    rng = np.random.default_rng(7)
    z = 1.959964
    out = {"covered": [], "covered_by_prompts": [], "flagged": [], "gamma_covered": [],
           "nu": []}
    for rep in range(repetitions):
        s = simulate(THETA, 0.5, gamma, 2, prompts=40, raters=12, rng=rng, taste=taste)
        votes = bt.Votes.of(len(THETA), s["left"], s["right"], s["outcome"], s["prompt"],
                            s["rater"])
        found = bt.fit_votes(votes)
        se = bt.standard_errors(votes, resamples, seed=rep)
        theta = found.theta[0]
        out["covered"].append(np.abs(theta - THETA) <= z * se["theta"])
        by_prompt = bt.bootstrap(votes, "prompt", resamples, seed=rep).theta.std(axis=0)
        out["covered_by_prompts"].append(np.abs(theta - THETA) <= z * by_prompt)
        decided = s["outcome"] != bt.TIE
        out["flagged"].append(position_bias(s["outcome"][decided] == bt.LEFT).flagged)
        out["gamma_covered"].append(abs(found.eta[0] - np.log(gamma)) <= z * se["eta"])
        out["nu"].append(np.exp(found.tau[0]))
    return {k: np.array(v) for k, v in out.items()}


def test_strengths_with_ties_and_a_position_bias_are_recovered_with_covering_intervals():
    found = recover(taste=0.0, gamma=1.6)
    assert found["covered"].mean() >= 0.9, found["covered"].mean()
    assert found["flagged"].all(), "the injected position bias must be flagged every time"
    assert found["gamma_covered"].mean() >= 0.85
    assert abs(np.mean(found["nu"]) - 0.5) < 0.05  # Davidson's tie parameter


def test_raters_of_their_own_taste_need_the_rater_resampling():
    # each rater has own offsets: the votes of one rater are not independent of each other, so
    # resampling prompts alone gives intervals that are too narrow
    found = recover(taste=0.5, gamma=1.0)
    assert found["covered"].mean() >= 0.9, found["covered"].mean()
    assert found["covered_by_prompts"].mean() < found["covered"].mean() - 0.1
    assert found["flagged"].sum() <= 3  # no position bias was injected: ~5% false alarms


def _penalised_loglik(params: np.ndarray, counts: np.ndarray, pairs: np.ndarray,
                      runs: int) -> float:
    theta, eta, tau = params[:runs], params[runs], params[runs + 1]
    a, b = theta[pairs[:, 0]] + eta, theta[pairs[:, 1]]
    logits = np.stack([a, b, tau + (a + b) / 2], axis=1)
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    penalty = bt.RIDGE * (theta ** 2).sum() + bt.RIDGE_OTHER * (eta ** 2 + tau ** 2)
    return float((counts * logp).sum() - penalty / 2)


def test_the_newton_fit_is_the_maximum_a_general_optimiser_finds():
    pairs = np.array([[0, 1], [1, 0], [1, 2], [2, 1], [0, 2], [2, 0]])
    counts = np.array([[9, 3, 2], [4, 6, 1], [7, 2, 3], [1, 5, 0], [12, 1, 2], [2, 3, 1]],
                      float)
    found = bt.fit(counts[None], pairs, 3)
    best = optimize.minimize(lambda p: -_penalised_loglik(p, counts, pairs, 3), np.zeros(5),
                             method="BFGS", options={"gtol": 1e-10})
    assert np.allclose(found.params[0], best.x, atol=1e-5)
    assert abs(found.theta[0].sum()) < 1e-8  # the ridge puts the origin at the average run


def test_a_run_that_never_loses_gets_a_finite_strength_and_ranks_first():
    votes = [{"rater": f"r{i % 3}", "prompt_id": f"p{i % 5}", "sample_idx": 0,
              "left_run": "a" if i % 2 else "b", "right_run": "b" if i % 2 else "a",
              "answer": "left" if i % 2 else "right", "question": "q"} for i in range(30)]
    votes += [{"rater": "r0", "prompt_id": f"p{i}", "sample_idx": 0, "left_run": "b",
               "right_run": "c", "answer": ["left", "tie"][i % 2], "question": "q"}
              for i in range(10)]
    result = question_result("q", "Which?", votes, ["a", "b", "c"], {}, {}, resamples=50)
    best = result.strengths[0]
    assert best.run == "a" and best.losses == 0 and best.wins == 30
    assert np.isfinite([best.strength, best.low, best.high]).all()
    assert best.low > result.strengths[1].strength


def test_win_rates_count_both_sides_and_ties_as_half():
    votes = bt.Votes.of(2, [0, 0, 1, 1], [1, 1, 0, 0],
                        [bt.LEFT, bt.TIE, bt.LEFT, bt.RIGHT], [0, 1, 2, 3], [0, 0, 0, 0])
    rates, seen = bt.win_rates(votes)
    # run 0: a win on the left, a tie, a loss (run 1 won on the left), a win on the right
    assert rates[0, 1] == pytest.approx(2.5 / 4) and rates[1, 0] == pytest.approx(1.5 / 4)
    assert seen[0, 1] == 4 and np.isnan(rates[0, 0])


def test_krippendorff_alpha_on_the_published_nominal_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: four coders,
    # twelve units, missing values; nominal alpha = 0.743
    table = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
             [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
             [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
             [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    values = [v - 1 for row in table for v in row if v is not None]
    units = [u for row in table for u, v in enumerate(row) if v is not None]
    found = krippendorff_alpha(np.array(values), np.array(units), resamples=200)
    assert found.value == pytest.approx(0.743, abs=5e-4)
    assert found.units == 11  # unit 12 has one value: it pairs with nothing
    assert found.interval.low < 0.743 < found.interval.high
    same = krippendorff_alpha(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]), 0)
    assert same.value == 1.0


def test_the_position_check_against_fifty_percent():
    fair = position_bias(np.array([True] * 50 + [False] * 50))
    assert not fair.flagged and fair.p_value == pytest.approx(1.0)
    leaning = position_bias(np.array([True] * 70 + [False] * 30))
    assert leaning.flagged and leaning.p_value < 1e-4 and leaning.interval[0] > 0.5


def test_judge_agreement_with_the_human_majority():
    assert majority(["a", "a", "b"]) == "a"
    assert majority(["a", "b"]) is None and majority(["none", "none", "a"]) is None
    groups = np.repeat(np.arange(20), 5)
    perfect = agreement(np.ones(100), groups, 200)
    assert perfect.value == 1.0 and perfect.units == 100
    half = agreement(np.tile([1.0, 0.0], 50), groups, 200)
    assert half.interval.low < 0.5 < half.interval.high
