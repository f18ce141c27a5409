"""Votes drawn from the rating model with known parameters, for the recovery tests."""

from __future__ import annotations

import numpy as np


def simulate(theta: np.ndarray, nu: float, gamma: float, pairs_per_prompt: int, prompts: int,
             raters: int, rng: np.random.Generator, taste: float = 0.0) -> dict[str, np.ndarray]:
    """Votes drawn from the model with known strengths `theta`, tie parameter `nu` and position
    advantage `gamma`: every rater sees `pairs_per_prompt` random pairs of runs on each prompt,
    each with its sides drawn at random. `taste`: the spread of each rater's own offsets to the
    strengths, drawn afresh for these raters, so `theta` is the average over all the raters one
    could ask, not over these. Returns left, right, outcome, prompt, rater arrays."""
    runs = len(theta)
    count = prompts * raters * pairs_per_prompt
    a = rng.integers(0, runs, count)
    b = (a + rng.integers(1, runs, count)) % runs  # any other run
    prompt = np.repeat(np.arange(prompts), raters * pairs_per_prompt)
    rater = np.tile(np.repeat(np.arange(raters), pairs_per_prompt), prompts)
    offsets = rng.normal(0.0, taste, (raters, runs))
    own = theta[None, :] + offsets
    ta, tb = own[rater, a] + np.log(gamma), own[rater, b]
    logits = np.stack([ta, tb, np.log(nu) + (ta + tb) / 2], axis=1)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    outcome = (rng.random(count)[:, None] > np.cumsum(prob, axis=1)).sum(axis=1)
    return {"left": a, "right": b, "outcome": outcome, "prompt": prompt, "rater": rater}
