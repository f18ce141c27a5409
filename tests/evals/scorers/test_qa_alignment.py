"""Question-based alignment on the tiny random-init VLM, with questions from GenEval 2 and
DPG-Bench fixtures in their published formats, checked against Soft-TIFA and DSG computed here
from their definitions: each question's probability from the model alone, DSG's zeroing of a
question whose parent fails, the geometric mean per prompt (scipy), the atom-level mean per
skill and per atom count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import gmean

from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import statistics
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.plan import plan_parts
from darkroom.evals.spec import EvalSpec
from darkroom.platform import suites
from tests.evals.oracles import vlm_probability
from tests.evals.suite_fixtures import write_suite

SUFFIX = " Answer in one word."  # GenEval 2's evaluation.py
NUMBERS = {"one": "1", "two": "2", "seven": "7"}


def forms(question: str, answer: str) -> list[str]:
    """GenEval 2's answer_list: Yes forms, or for "How many" the word, capitalised, spaced and
    its numeral."""
    if not question.startswith("How many"):
        return ["Yes", "yes", " yes", " Yes"]
    return [answer, answer.capitalize(), " " + answer, " " + answer.capitalize(),
            NUMBERS[answer], " " + NUMBERS[answer]]


def dsg(questions, probabilities, threshold=0.5):
    """DSG (Cho et al. 2024): a question whose parent was answered no scores 0."""
    score = {}
    for q, p in zip(questions, probabilities, strict=True):
        score[q.id] = 0.0 if any(score[parent] < threshold for parent in q.parents) else p
    return [score[q.id] for q in questions]


def pictures(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (56, 64, 3), dtype=np.uint8) for _ in range(count)]


def judged(tiny_vlm_dir, suite: str, tmp_path, **qa):
    items = suites.items(suite, write_suite(suite, tmp_path / suite))
    images = pictures(len(items))
    spec = EvalSpec(metrics=["qa_alignment"], judge={"model": str(tiny_vlm_dir),
                                                     "batch_size": 5}, qa_alignment=qa)
    part = build_part(plan_parts(spec)[0].parts[0])
    metadata = np.array([item.annotation() for item in items], dtype=object)
    out = part(images, {"prompt": np.array([i.prompt for i in items], dtype=object),
                        "metadata": metadata})
    probabilities = [[vlm_probability(tiny_vlm_dir, image, q.text + SUFFIX, forms(q.text,
                                                                                  q.answer))
                      for q in item.questions] for item, image in zip(items, images, strict=True)]
    return items, out, probabilities, metadata, spec


def test_soft_tifa_on_geneval2_questions(tiny_vlm_dir, tmp_path):
    items, out, probabilities, metadata, spec = judged(tiny_vlm_dir, "geneval2", tmp_path)
    for i, p in enumerate(probabilities):
        assert out["qa_alignment"][i] == pytest.approx(gmean(p), abs=1e-6)  # Soft-TIFA GM
        assert out["qa_alignment_mean"][i] == pytest.approx(np.mean(p), abs=1e-6)
        records = json.loads(out["qa_answers"][i])
        assert [r["p"] for r in records] == pytest.approx(p, abs=1e-6)
        assert [r["skill"] for r in records] == [q.skill for q in items[i].questions]
    columns = {"row_id": np.array(["a", "b", "c"], dtype=object),
               "prompt": np.array([i.prompt for i in items], dtype=object),
               "metadata": metadata, **out}
    stats, missing = statistics(RunScores("r", columns), Context(spec), ["qa_alignment"])
    assert missing == {}
    assert stats["qa_alignment"].value == pytest.approx(np.mean([gmean(p) for p in
                                                                 probabilities]), abs=1e-6)
    atoms = [(q.skill, p) for item, ps in zip(items, probabilities, strict=True)
             for q, p in zip(item.questions, ps, strict=True)]
    assert stats["qa_alignment_atoms"].value == pytest.approx(np.mean([p for _, p in atoms]),
                                                              abs=1e-6)
    for skill in ("object", "attribute", "count", "verb"):  # Soft-TIFA AM per skill
        assert stats[f"qa_alignment_atoms.skill.{skill}"].value == pytest.approx(
            np.mean([p for s, p in atoms if s == skill]), abs=1e-6)
    # per atom count (GenEval 2's Soft-TIFA GM by atomicity): prompts 0 and 1 have 3 atoms
    assert stats["qa_alignment.atom_count.3"].value == pytest.approx(
        np.mean([gmean(probabilities[0]), gmean(probabilities[1])]), abs=1e-6)
    assert stats["qa_alignment.atom_count.4"].value == pytest.approx(gmean(probabilities[2]),
                                                                     abs=1e-6)
    # resampled: prompt 0 drawn twice and prompt 2 once
    counts = np.array([[2, 0, 1]])
    weighted = (2 * sum(p for p in probabilities[0]) + sum(probabilities[2])) / (
        2 * len(probabilities[0]) + len(probabilities[2]))
    assert stats["qa_alignment_atoms"].resample(counts)[0] == pytest.approx(weighted, abs=1e-6)


def test_dsg_dependencies_on_dpg_bench_questions(tiny_vlm_dir, tmp_path):
    """At a threshold between the parents' probabilities some parents hold and some fail: a
    child of a failed parent scores 0 and is marked skipped, the others keep theirs."""
    items, _, probabilities, _, _ = judged(tiny_vlm_dir, "dpg_bench", tmp_path)
    parents = sorted({p for item, ps in zip(items, probabilities, strict=True)
                      for q, p in zip(item.questions, ps, strict=True)
                      if any(q.id in c.parents for c in item.questions)})
    threshold = float(np.mean(parents[len(parents) // 2 - 1:len(parents) // 2 + 1]))
    _, out, _, _, _ = judged(tiny_vlm_dir, "dpg_bench", tmp_path / "again",
                             threshold=threshold)
    skipped = 0
    for i, (item, p) in enumerate(zip(items, probabilities, strict=True)):
        scores = dsg(item.questions, p, threshold)
        assert out["qa_alignment_mean"][i] == pytest.approx(np.mean(scores), abs=1e-6)
        records = json.loads(out["qa_answers"][i])
        assert [r["score"] for r in records] == pytest.approx(scores, abs=1e-6)
        assert [r["p"] for r in records] == pytest.approx(p, abs=1e-6)
        flags = [s == 0 and raw > 0 for s, raw in zip(scores, p, strict=True)]
        assert [r["skipped"] for r in records] == flags
        skipped += sum(flags)
    assert 0 < skipped < sum(len(i.questions) for i in items) - 4  # some, not all children


def test_without_questions_or_with_failed_answers_it_is_missing(tiny_vlm_dir):
    spec = EvalSpec(metrics=["qa_alignment"], judge={"model": str(tiny_vlm_dir)})
    part = build_part(plan_parts(spec)[0].parts[0])
    out = part(pictures(2), {"prompt": np.array(["a", "b"], dtype=object),
                             "metadata": np.array([None, ""], dtype=object)})
    columns = {"row_id": np.array(["a", "b"], dtype=object),
               "prompt": np.array(["a", "b"], dtype=object), **out}
    _, missing = statistics(RunScores("r", columns), Context(spec), ["qa_alignment"])
    assert "carry no questions" in missing["qa_alignment"]
    failed = {**columns, "qa_alignment_error": np.array(["http://j: HTTP 503", ""],
                                                        dtype=object),
              "qa_alignment": np.array([np.nan, 0.5])}
    _, missing = statistics(RunScores("r", failed), Context(spec), ["qa_alignment"])
    assert missing["qa_alignment"].startswith("1 of 2 image(s) could not be judged")
