"""Per-skill results: every per-image metric on the images of each skill of their prompts, with
an interval from the same resamples as the run's value, its direction, compared paired per
skill against a baseline, and shown as a skill table."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.categories import Annotations, attach_annotations
from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import higher_is_better, statistics, with_intervals
from darkroom.evals.reporting.compare import RunRow, skill_tables
from darkroom.evals.reporting.paired import RunData, compare_runs
from darkroom.evals.spec import EvalSpec

SKILLS = {"00000": ("counting",), "00001": ("counting", "colour"), "00002": ("colour",),
          "00003": ("position",), "00004": ("position",)}


def run(values, name="run") -> RunScores:
    """Five prompts of two images each, with VQAScore values."""
    ids = [f"{p:05d}" for p in range(5) for _ in range(2)]
    columns = {"row_id": np.array([f"{p}-{k}" for p, k in zip(ids, [0, 1] * 5, strict=True)],
                                  dtype=object),
               "prompt_id": np.array(ids, dtype=object), "sample_idx": np.array([0, 1] * 5),
               "seed": np.arange(10), "prompt": np.array(["p"] * 10, dtype=object),
               "vqascore": np.asarray(values, dtype=np.float64),
               "vqascore_error": np.array([""] * 10, dtype=object)}
    attach_annotations(columns, Annotations(skills=SKILLS))
    return RunScores(name, columns)


VALUES = np.array([0.9, 0.8, 0.6, 0.7, 0.2, 0.3, 0.5, 0.5, 0.1, 0.4])


def test_each_skill_is_the_metric_on_its_prompts_images_with_the_same_resamples():
    scores = run(VALUES)
    spec = EvalSpec(metrics=["vqascore"])
    stats, missing = statistics(scores, Context(spec), ["vqascore"])
    assert missing == {}
    # a prompt with two skills counts in both
    assert stats["vqascore.skill.counting"].value == pytest.approx(VALUES[:4].mean())
    assert stats["vqascore.skill.colour"].value == pytest.approx(VALUES[2:6].mean())
    assert stats["vqascore.skill.position"].value == pytest.approx(VALUES[6:].mean())
    counts = scores.counts(300, 0)
    shown = with_intervals(stats, counts, 0.95)
    rows = np.arange(6, 10)
    means = (counts[:, rows] @ VALUES[rows]) / counts[:, rows].sum(axis=1)
    means = means[np.isfinite(means)]
    assert shown["vqascore.skill.position_ci_low"] == pytest.approx(np.quantile(means, 0.025))
    assert higher_is_better("vqascore.skill.position")
    assert not higher_is_better("fid_category.cats")


def test_a_baseline_comparison_is_paired_per_skill_and_the_skill_table_shows_them():
    spec = EvalSpec(metrics=["vqascore"])
    better = VALUES.copy()
    better[6:] += 0.3  # position improves, the rest does not move
    ours = RunData("candidate", run(better, "candidate"), spec, {}, {})
    base = RunData("base", run(VALUES, "base"), spec, {}, {})
    found = compare_runs(ours, base, ["vqascore"], 300, 0, 0.95)
    position = found.differences["vqascore.skill.position"]
    assert position.paired and position.delta == pytest.approx(0.3)
    assert position.verdict == "better"
    assert found.differences["vqascore.skill.counting"].verdict == "no detectable difference"
    rows = [RunRow("a", "a", {}, {"vqascore": 0.5, "vqascore.skill.position": 0.75,
                                  "vqascore.skill.position_ci_low": 0.7,
                                  "vqascore.skill.position_ci_high": 0.8,
                                  "vqascore.skill.colour": 0.5}, display="a"),
            RunRow("b", "b", {}, {"vqascore": 0.4, "vqascore.skill.position": 0.45},
                   display="b")]
    [(title, header, body)] = skill_tables(rows, "vqascore")
    assert title.startswith("vqascore per skill") and header == ["run", "colour", "position"]
    assert body == [["a", "0.5000", "0.750 ± 0.050"], ["b", "missing", "0.4500"]]


def test_a_suites_prompts_carry_their_skills_or_their_questions(tmp_path):
    from darkroom.evals.categories import prompt_annotations
    from tests.evals.suite_fixtures import write_suite

    def annotations(name):
        file = write_suite(name, tmp_path / name)
        return prompt_annotations({"prompts": {"suite": name, "file": str(file)}})

    geneval = annotations("geneval")  # a tag per prompt: its one skill, and its category
    assert geneval.skills["00001"] == ("counting",) and geneval.categories["00001"] == "counting"
    geneval2 = annotations("geneval2")  # skills per question: the prompt has all of them
    assert geneval2.skills["00000"] == ("attribute", "count", "object")
    assert geneval2.skills["00002"] == ("attribute", "object", "verb")
    assert geneval2.categories is None and "do not each have one category" in geneval2.reason
