"""A run's metrics: each named metric's statistics over the run's scored rows, the reasons for
those that are missing, and their bootstrap intervals; the direction of every MLflow key.

A metric that cannot be computed raises `Unavailable` with the reason, and the run records it as
missing, never as 0. The metrics themselves are registered with what they need
(`darkroom.evals.registry`): corpus metrics in `corpus.py`, per-image ones with their scorer.

Every per-image metric is also computed on the images of each skill (or category) of the
prompts, when the rows carry their prompts' `skills`: `<key>.skill.<skill>`, resampled with the
same prompts drawn as the whole run's value, so a skill's interval and its paired comparison come
out of the same bootstrap.
"""

from __future__ import annotations

import re

import numpy as np

from darkroom.evals import registry
from darkroom.evals.metrics.base import Context, RunScores, Statistic, Unavailable
from darkroom.evals.metrics.bootstrap import interval
from darkroom.evals.metrics.corpus import CATEGORY_PREFIX

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
SKILL = ".skill."  # <key>.skill.<skill>
SKILLS_COLUMN = "skills"

# Every MLflow metric Darkroom logs, with its direction (for compare's ranking and Pareto front).
HIGHER_IS_BETTER: dict[str, bool] = {
    **{m.key: m.higher_is_better for m in registry.metrics().values()},
    **{k: up for m in registry.metrics().values() for k, up in m.other_keys.items()},
    "images_per_s": True, "seconds_per_image": False,
}


def higher_is_better(key: str) -> bool:
    """The direction of an MLflow key (per-category FIDs: lower; a skill's value: its metric's;
    unknown keys: higher)."""
    if key.startswith(CATEGORY_PREFIX):
        return False
    return HIGHER_IS_BETTER.get(key.split(SKILL)[0], True)


def skill_key(key: str, skill: str) -> str:
    """The MLflow key of a metric's value on one skill's images (characters MLflow refuses
    become `_`)."""
    return key + SKILL + re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(skill))[:200]


def per_skill(metric, scores: RunScores, ctx: Context, whole: dict[str, Statistic]
              ) -> dict[str, Statistic]:
    """The metric on the images of each skill of their prompts (a prompt with several skills
    counts in each), for per-image metrics whose rows carry `skills`."""
    skills = scores.columns.get(SKILLS_COLUMN)
    if skills is None or metric.on_features or "*" in metric.key or metric.key not in whole:
        return {}
    out: dict[str, Statistic] = {}
    for skill in sorted({s for row in skills for s in (row or ())}):
        rows = np.array([i for i, row in enumerate(skills) if row and skill in row], int)
        quiet = Context(ctx.spec, ctx.references)  # its warnings are the whole run's
        try:
            stat = metric.compute(scores.take(rows), quiet).get(metric.key)
        except Unavailable:
            continue
        if stat is None or not np.isfinite(stat.value):
            continue
        resample = None if stat.resample is None else (
            lambda counts, rows=rows, f=stat.resample: f(counts[:, rows]))
        out[skill_key(metric.key, skill)] = Statistic(stat.value, resample, stat.bounds,
                                                      stat.drifts)
    return out


def statistics(scores: RunScores, ctx: Context, names: list[str],
               skipped: dict[str, str] | None = None) -> tuple[dict[str, Statistic],
                                                               dict[str, str]]:
    """Each named metric's statistics for one run, and the metrics that are missing with their
    reasons (`skipped`: reasons known before the run was looked at)."""
    out: dict[str, Statistic] = {}
    missing: dict[str, str] = {}
    for name in names:
        metric = registry.metric(name)
        reason = (skipped or {}).get(name) or scores.part_errors.get(metric.part_for(ctx.spec))
        if reason is None and scores.count == 0:
            reason = "the run has no images"
        if reason:
            missing[name] = reason
            continue
        try:
            computed = metric.compute(scores, ctx)
        except Unavailable as err:
            missing[name] = str(err)
            continue
        bad = sorted(k for k, stat in computed.items() if not np.isfinite(stat.value))
        if metric.key in bad or len(bad) == len(computed):
            missing[name] = (f"its value came out {computed[bad[0]].value} (not a finite "
                             "number); nothing is logged for it")
            continue
        if bad:
            ctx.warnings.append(f"{scores.run_id}: {', '.join(bad)} came out non-finite and "
                                "were left out")
        out.update({k: v for k, v in computed.items() if k not in bad})
        out.update(per_skill(metric, scores, ctx, computed))
    return out, missing


def with_intervals(stats: dict[str, Statistic], counts: np.ndarray, level: float,
                   zero_width: dict[str, str] | None = None) -> dict[str, float]:
    """The values, and `<key>_ci_low` / `<key>_ci_high` for every key that can be resampled
    (none when `counts` has no rows: bootstrap off). An interval of zero width is kept (it is
    what the resamples say) and `zero_width` gets the key with the reason."""
    values: dict[str, float] = {}
    for key, stat in stats.items():
        values[key] = stat.value
        if stat.resample is None or not len(counts):
            continue
        ci = interval(stat.value, stat.resample(counts), level, stat.bounds, stat.drifts)
        if ci is None:
            continue
        values[key + CI_LOW], values[key + CI_HIGH] = ci.low, ci.high
        if ci.low == ci.high and zero_width is not None:
            zero_width[key] = _why_zero_width(counts)
    return values


def _why_zero_width(counts: np.ndarray) -> str:
    if (counts == counts[0]).all():
        return ("nothing to resample: every class (or the run) holds a single image, so every "
                "resample draws the same images")
    return "every resample gives the same value (the images all score alike)"
