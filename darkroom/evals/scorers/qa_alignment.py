"""The `qa_alignment` part and metric: question-based alignment (TIFA, Hu et al. 2023; DSG, Cho et
al. 2024; Soft-TIFA, GenEval 2): the judge is asked each of a prompt's questions (its atoms, from
a suite: GenEval 2's `vqa_list`, DPG-Bench's DSG questions), and scores each with the probability
of the expected answer.

- An answer's forms are GenEval 2's: `Yes`, `yes`, ` yes`, ` Yes` for yes; for a count (a
  question starting "How many", or a number word) the word, capitalised, with a space, and its
  numeral; any other answer as it is, capitalised, with a space. Each question is asked with
  GenEval 2's suffix (` Answer in one word.`).
- A question whose parent questions do not hold (DSG's dependencies: a parent's score below 0.5)
  scores 0 and is marked skipped, as DPG-Bench's compute_dpg_bench.py zeroes it.
- Per image: `qa_alignment` is the geometric mean of its question scores (Soft-TIFA GM's per
  prompt score); `qa_alignment_mean` their arithmetic mean (TIFA's, DSG's and DPG-Bench's).
  Every question's record (question, answer, skill, probability, score, skipped) is kept in
  the `qa_answers` column of the run's scores.
- Per run: `qa_alignment` and `qa_alignment_mean` average the images; `qa_alignment_atoms` is the
  mean over every question of every image (Soft-TIFA AM), and `qa_alignment_atoms.skill.<skill>`
  over the questions of one skill (GenEval 2's per-skill table; DPG-Bench's per-category scores,
  which, as there, read the probabilities before dependencies); `qa_alignment.atom_count.<n>`
  averages the images of prompts with n atoms (GenEval 2's per-atomicity table). The papers
  report these x100; here they are probabilities in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.evals.metrics.base import (
    UNIT,
    Context,
    RunScores,
    Statistic,
    Unavailable,
    mean_statistic,
)
from darkroom.evals.scorers import judge
from darkroom.evals.units import Metric, Part, PartFn, PlannedPart, Scorer, Setting

VERSION = 1
ATOMS, MEAN = "qa_alignment_atoms", "qa_alignment_mean"
SKILL, ATOM_COUNT = ".skill.", ".atom_count."
NUMERALS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
YES = ("Yes", "yes", " yes", " Yes")


class QASpec(BaseModel):
    """`eval.qa_alignment`: how each question is asked and scored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    suffix: str = Field(" Answer in one word.", description="appended to every question "
                        "(GenEval 2's)")
    dependencies: bool = Field(True, description="score 0 a question whose parent questions "
                               "do not hold (DSG)")
    threshold: float = Field(0.5, gt=0, lt=1, description="a parent holds when its score "
                             "reaches this")


QA = Setting("qa_alignment", "question-based alignment: the question suffix and DSG's "
             "dependencies", annotation=QASpec, default_factory=QASpec)


def answer_forms(question: str, answer: str) -> tuple[str, ...]:
    """The forms of an expected answer whose first tokens count (GenEval 2's evaluation.py)."""
    word = answer.strip()
    if word.lower() == "yes":
        return YES
    forms = [word, word.capitalize(), " " + word, " " + word.capitalize()]
    if question.startswith("How many") or word.lower() in NUMERALS:
        numeral = NUMERALS.get(word.lower(), "other")
        forms += [numeral, " " + numeral]
    return tuple(dict.fromkeys(forms))


def dependent_scores(questions: Sequence[Mapping[str, Any]], probabilities: Sequence[float],
                     threshold: float, dependencies: bool) -> tuple[list[float], list[bool]]:
    """Each question's score and whether it was skipped: its probability, or 0 when a parent
    (by id, earlier in the list) scored below the threshold (DSG)."""
    by_id: dict[str, float] = {}
    scores, skipped = [], []
    for question, probability in zip(questions, probabilities, strict=True):
        parents = question.get("parents") or () if dependencies else ()
        fails = any(by_id.get(str(p), 1.0) < threshold for p in parents)
        score = 0.0 if fails else float(probability)
        by_id[str(question.get("id", ""))] = score
        scores.append(score)
        skipped.append(fails)
    return scores, skipped


def _questions(metadata: Any) -> list[dict[str, Any]]:
    try:
        return list(json.loads(metadata or "{}").get("questions") or [])
    except (TypeError, ValueError):
        return []


def _asked(planned: PlannedPart) -> tuple[judge.JudgeSpec, QASpec]:
    return (judge.judge_spec(planned.options.get("judge")),
            QASpec.model_validate(planned.options.get("qa_alignment") or {}))


def _build(planned: PlannedPart, device: str) -> PartFn:
    judge_spec, asked = _asked(planned)
    model = judge.load_judge(judge_spec, device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        metadata = batch.get("metadata", [None] * len(images))
        questions = [_questions(m) for m in metadata]
        queries, owner = [], []
        for i, asked_here in enumerate(questions):
            for q in asked_here:
                queries.append(judge.Query(images[i], q["text"] + asked.suffix,
                                           answer_forms(q["text"], q.get("answer", "yes"))))
                owner.append(i)
        values, errors = judge.judged(model, queries)
        gm, mean = np.full(len(images), np.nan), np.full(len(images), np.nan)
        records = np.full(len(images), "[]", dtype=object)
        reasons = np.array(["no questions"] * len(images), dtype=object)
        owner = np.array(owner, int)
        for i, asked_here in enumerate(questions):
            if not asked_here:
                continue
            mine = np.flatnonzero(owner == i)
            failed = [str(errors[j]) for j in mine if errors[j] or not np.isfinite(values[j])]
            reasons[i] = failed[0] if failed else ""
            if failed:
                continue
            scores, skipped = dependent_scores(asked_here, values[mine], asked.threshold,
                                               asked.dependencies)
            gm[i] = float(np.exp(np.mean(np.log(scores)))) if min(scores) > 0 else 0.0
            mean[i] = float(np.mean(scores))
            records[i] = json.dumps([
                {"question": q["text"], "answer": q.get("answer", "yes"),
                 "skill": q.get("skill", ""), "p": float(values[j]), "score": score,
                 "skipped": skip}
                for q, j, score, skip in zip(asked_here, mine, scores, skipped, strict=True)])
        return {"qa_alignment": gm, MEAN: mean, "qa_answers": records,
                "qa_alignment_error": reasons}

    return part


def _check(planned: PlannedPart, spec: Any) -> str | None:
    return judge.check(_asked(planned)[0])


def _cache(planned: PlannedPart) -> dict[str, Any]:
    judge_spec, asked = _asked(planned)
    return judge.protocol(judge_spec, scorer="qa_alignment", version=VERSION,
                          **asked.model_dump())


def _ratio(numerators: np.ndarray, denominators: np.ndarray) -> Statistic:
    """sum(numerators) / sum(denominators) over the images, resampled as weighted sums."""

    def resample(counts: np.ndarray) -> np.ndarray:
        total = counts @ denominators
        return (counts @ numerators) / np.where(total > 0, total, np.nan)

    return Statistic(float(numerators.sum() / denominators.sum()), resample, UNIT)


def qa_alignment(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Question-based alignment (TIFA, DSG, Soft-TIFA): the judge's probability of each
    question's expected answer; per image their geometric (and arithmetic) mean, per run the
    mean over images and over questions, per skill and per atom count."""
    records = [json.loads(r) if isinstance(r, str) else [] for r in scores.column("qa_answers")]
    errors = np.asarray(scores.column("qa_alignment_error"))
    asked = np.array([e != "no questions" for e in errors])
    if not asked.any():
        raise Unavailable("the prompts carry no questions (use a suite with questions, such "
                          "as geneval2 or dpg_bench)")
    values = np.asarray(scores.column("qa_alignment"), dtype=np.float64)
    failed = judge.first_failure(values[asked], errors[asked])
    if failed:
        raise Unavailable(failed)
    out = {"qa_alignment": mean_statistic(values, asked, UNIT),
           MEAN: mean_statistic(np.asarray(scores.column(MEAN), dtype=np.float64), asked, UNIT)}
    p = [np.array([q["p"] for q in r]) for r in records]
    out[ATOMS] = _ratio(np.array([x.sum() for x in p]), np.array([len(x) for x in p], float))
    for skill in sorted({q["skill"] for r in records for q in r if q.get("skill")}):
        hits = [np.array([q["p"] for q in r if q.get("skill") == skill]) for r in records]
        out[ATOMS + SKILL + skill] = _ratio(np.array([x.sum() for x in hits]),
                                            np.array([len(x) for x in hits], float))
    counts = _atom_counts(scores)
    for n in sorted({c for c in counts if c is not None}):
        use = asked & np.array([c == n for c in counts])
        out[f"qa_alignment{ATOM_COUNT}{n}"] = mean_statistic(values, use, UNIT)
    return out


def _atom_counts(scores: RunScores) -> list[int | None]:
    metadata = scores.columns.get("metadata")
    if metadata is None:
        return [None] * scores.count
    found = []
    for m in metadata:
        try:
            found.append((json.loads(m or "{}").get("metadata") or {}).get("atom_count"))
        except (TypeError, ValueError):
            found.append(None)
    return found


UNITS = (
    Scorer("qa_alignment", "judge", _build,
           ("qa_alignment", MEAN, "qa_answers", "qa_alignment_error"),
           "the judge's probability of each question's expected answer (TIFA, DSG, Soft-TIFA)",
           settings=(judge.JUDGE, QA), check=_check, cache=_cache),
    Metric("qa_alignment", "qa_alignment", True, Part("qa_alignment"),
           "a VLM judge's answers to the prompt's questions: geometric mean per image "
           "(Soft-TIFA GM), averaged", qa_alignment, other_keys={MEAN: True, ATOMS: True}),
)
