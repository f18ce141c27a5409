"""Bootstrap intervals: resampling units, coverage of the true value by simulation, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.metrics.base import mean_statistic
from darkroom.evals.metrics.bootstrap import (
    BETTER,
    SAME,
    WORSE,
    difference,
    interval,
    resample_counts,
    verdict,
)
from darkroom.evals.metrics.distances import Frechet, Stats
from tests.evals.oracles import gaussian_fid


def test_counts_draw_prompts_with_their_images():
    groups = np.array(["a", "a", "a", "b", "b", "c"])
    counts = resample_counts(groups, 200, seed=1)
    assert counts.shape == (200, 6)
    # a prompt's images are drawn together, and 3 prompts are drawn each time
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 3] == counts[:, 4]).all()
    assert (counts[:, [0, 3, 5]].sum(axis=1) == 3).all()
    assert (resample_counts(groups, 200, seed=1) == counts).all()  # seeded
    assert not (resample_counts(groups, 200, seed=2) == counts).all()
    assert resample_counts(groups, 0, seed=1).shape == (0, 6)  # bootstrap off


def test_counts_keep_the_classes_of_a_balanced_prompt_set():
    """Prompts drawn within their class: every resample has as many prompts of each class as
    the run, while which prompts (and how often each) varies."""
    prompts = np.repeat(np.arange(20), 3)  # 20 prompts, 3 images each
    classes = np.repeat(np.arange(20) % 4, 3)  # 5 prompts per class
    counts = resample_counts(prompts, 300, seed=0, strata=classes)
    for c in range(4):
        assert (counts[:, classes == c].sum(axis=1) == 15).all()
    assert len({tuple(row) for row in counts}) > 250
    free = resample_counts(prompts, 300, seed=0)
    assert (free[:, classes == 0].sum(axis=1) != 15).mean() > 0.5


@pytest.mark.slow
def test_fid_interval_covers_the_true_fid_of_two_known_gaussians():
    """100 evaluations of 500 images drawn from a known Gaussian against the exact statistics of
    another: the 95% interval holds the closed-form FID in at least 90 of them."""
    d = 4
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    mu_g, s_g = np.full(d, 0.5), mixing @ mixing.T + 0.5 * np.eye(d)
    mu_r, s_r = np.zeros(d), np.eye(d)
    truth = gaussian_fid(mu_r, s_r, mu_g, s_g)
    reference = Stats(mu_r, s_r, 10**9)
    covered, widths = 0, []
    for trial in range(100):
        x = np.random.default_rng(1000 + trial).multivariate_normal(mu_g, s_g, size=500)
        frechet = Frechet(x, reference)
        value = frechet(np.ones((1, 500)))[0]
        counts = resample_counts(np.arange(500), 200, seed=trial)
        ci = interval(value, frechet(counts), shift=True)  # FID drifts under resampling
        covered += ci.low <= truth <= ci.high
        widths.append(ci.high - ci.low)
    assert covered >= 90, (covered, truth)
    assert np.mean(widths) < truth  # informative, not a blanket interval


@pytest.mark.slow
def test_fid_interval_is_for_fid_at_this_image_count():
    """With 64-d features and 500 images FID's own sample-size bias (Chong & Forsyth 2020) is
    larger than its spread: the interval is for the FID a run of 500 images gets (its
    expectation, estimated from 400 independent runs), and covers that, not the infinite-sample
    value."""
    d, n = 64, 500
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    mu_g, s_g = np.full(d, 0.5), mixing @ mixing.T + 0.5 * np.eye(d)
    reference = Stats(np.zeros(d), np.eye(d), 10**9)

    def sample(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).multivariate_normal(mu_g, s_g, size=n)

    at_n = np.mean([Frechet(sample(5000 + t), reference)(np.ones((1, n)))[0]
                    for t in range(400)])
    infinite = gaussian_fid(np.zeros(d), np.eye(d), mu_g, s_g)
    covered, covered_infinite = 0, 0
    for trial in range(100):
        frechet = Frechet(sample(1000 + trial), reference)
        value = frechet(np.ones((1, n)))[0]
        ci = interval(value, frechet(resample_counts(np.arange(n), 200, seed=trial)),
                      shift=True)
        covered += ci.low <= at_n <= ci.high
        covered_infinite += ci.low <= infinite <= ci.high
    assert covered >= 90, covered
    assert covered_infinite < 10 and at_n > infinite + 2


def test_mean_interval_covers_with_prompts_and_row_resampling_would_not():
    """Images of one prompt share its difficulty: resampling prompts keeps the interval honest,
    resampling images one by one makes it too narrow."""
    from scipy.stats import truncnorm

    prompts, per_prompt = 40, 10
    # each prompt has its own success rate, 0.7 +- 0.2 kept inside [0, 1]; its images succeed at
    # that rate, so the accuracy over all prompts is the mean of that distribution
    rates = truncnorm(-0.7 / 0.2, 0.3 / 0.2, loc=0.7, scale=0.2)
    truth = rates.mean()
    prompt_ids = np.repeat(np.arange(prompts), per_prompt)
    covered = {"prompt": 0, "image": 0}
    for trial in range(100):
        rng = np.random.default_rng(trial)
        rate = rates.rvs(prompts, random_state=rng)
        right = rng.random(prompts * per_prompt) < rate[prompt_ids]
        stat = mean_statistic(right.astype(float))
        for unit, groups in (("prompt", prompt_ids), ("image", np.arange(len(right)))):
            ci = interval(stat.value, stat.resample(resample_counts(groups, 300, seed=trial)))
            covered[unit] += ci.low <= truth <= ci.high
    assert covered["prompt"] >= 90, covered
    assert covered["image"] < 85, covered


def test_interval_is_clipped_to_the_metric_range_and_needs_resamples():
    ci = interval(0.0, np.array([0.5, 1.0, 1.5, 2.0] * 5), bounds=(0.0, np.inf))
    assert ci.low == 0.0 and ci.high > 0
    assert interval(1.0, np.array([1.0, 2.0])) is None  # too few resamples
    assert interval(np.nan, np.ones(50)) is None


def test_verdicts_follow_the_direction_of_the_metric():
    reps = np.random.default_rng(0).normal(0, 1, 1000)
    up = difference(5.0, 0.0, reps + 5, np.zeros(1000), higher_is_better=True)
    assert up.verdict == BETTER and up.interval.low > 0
    assert difference(5.0, 0.0, reps + 5, np.zeros(1000), higher_is_better=False).verdict == WORSE
    same = difference(0.3, 0.0, reps, np.zeros(1000), higher_is_better=True)
    assert same.verdict == SAME and same.interval.low < 0 < same.interval.high
    assert verdict(None, True) == SAME


def test_a_class_with_a_single_prompt_has_its_images_drawn():
    """`prompts.classes` makes one prompt per class: there is no prompt to draw within a class,
    so its images are drawn one by one, and every class keeps its size. A class with several
    prompts still draws prompts with their images."""
    prompts = np.repeat(np.arange(4), 5).astype(str)  # 4 classes, one prompt each, 5 images
    counts = resample_counts(prompts, 300, seed=0, strata=np.repeat(np.arange(4), 5))
    assert (counts.reshape(300, 4, 5).sum(axis=2) == 5).all()
    assert len({tuple(row) for row in counts}) > 250  # the images vary, not the same draw

    mixed = np.array(["a", "a", "a", "b", "b", "c", "c"])  # class 0: one prompt; class 1: two
    counts = resample_counts(mixed, 200, seed=0, strata=np.array([0, 0, 0, 1, 1, 1, 1]))
    assert (counts[:, 3] == counts[:, 4]).all() and (counts[:, 5] == counts[:, 6]).all()
    assert (counts[:, 3] + counts[:, 5] == 2).all()
    assert (counts[:, :3].sum(axis=1) == 3).all() and len({tuple(r) for r in counts[:, :3]}) > 5

    one = resample_counts(np.zeros(6).astype(str), 100, seed=0)  # one prompt, no classes
    assert (one.sum(axis=1) == 6).all() and len({tuple(row) for row in one}) > 50


def test_one_prompt_per_class_gives_fid_an_interval_and_a_zero_width_one_says_why():
    """FID of a run with one prompt per class (the shipped gate_digits job's shape) gets an
    interval of real width; an interval that cannot vary is kept and the reason given."""
    from darkroom.evals.metrics.compute import with_intervals
    from darkroom.evals.metrics.corpus import frechet
    from tests.evals.oracles import gaussian_features

    classes = np.repeat(np.arange(5), 20)
    x = gaussian_features(0, n=100, d=4) + classes[:, None]
    ref = Stats.of(gaussian_features(1, n=300, d=4) + np.repeat(np.arange(5), 60)[:, None])
    counts = resample_counts(classes.astype(str), 100, seed=0, strata=classes)
    why: dict[str, str] = {}
    values = with_intervals({"fid": frechet(x, ref, "cleanfid")}, counts, 0.95, why)
    assert values["fid_ci_high"] - values["fid_ci_low"] > 0.01 and not why

    rates = {"nsfw_rate": mean_statistic(np.zeros(100)), "score": mean_statistic(x[:, 0])}
    values = with_intervals(rates, counts, 0.95, why)
    assert values["nsfw_rate_ci_low"] == values["nsfw_rate_ci_high"] == 0.0  # kept as it is
    assert set(why) == {"nsfw_rate"} and "every resample gives the same value" in why["nsfw_rate"]
    single = resample_counts(np.arange(5).astype(str), 100, seed=0, strata=np.arange(5))
    why = {}
    with_intervals({"score": mean_statistic(np.arange(5.0))}, single, 0.95, why)
    assert "nothing to resample" in why["score"]
