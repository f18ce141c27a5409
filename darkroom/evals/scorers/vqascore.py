"""The `vqascore` part and metric: VQAScore (Lin et al. 2024, "Evaluating Text-to-Visual
Generation with Image-to-Text Generation"; linzhiqiu/t2v_metrics), the probability that a
vision-language model answers "Yes" when shown the image and asked
`Does this figure show "{prompt}"? Please answer Yes or No.` (t2v_metrics' default question and
answer for chat VLMs, at commit 6ecb74f). It reads a prompt whole, as a sentence, where CLIP
score reads it as a bag of words and stops at 77 tokens.

The judge is `eval.judge` (`judge.py`: a local transformers model on the scoring actors, or an
OpenAI-compatible endpoint with logprobs); `eval.vqascore` sets the question template (`{}` is
the prompt) and the answer forms whose first-token probabilities add up. Scores are cached per
row under the judge and the template: evaluating again, or with more metrics, asks the judge
only what it has not answered. An image the judge could not answer for makes the metric
missing with the reason, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

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

QUESTION = 'Does this figure show "{}"? Please answer Yes or No.'
VERSION = 1  # bump when the way a score is read changes, so cached scores are asked again


class VQAScoreSpec(BaseModel):
    """`eval.vqascore`: what the judge is asked, and which answer counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(QUESTION, description="the question; `{}` is replaced by the prompt")
    answers: list[str] = Field(["Yes"], min_length=1, description="forms of the answer whose "
                               "first tokens' probabilities add up, e.g. [Yes, yes, ' yes']")

    @field_validator("question")
    @classmethod
    def _has_the_prompt(cls, question: str) -> str:
        if "{}" not in question:
            raise ValueError(f"the question must hold `{{}}` where the prompt goes, got "
                             f"{question!r}; e.g. {QUESTION!r}")
        return question


VQASCORE = Setting("vqascore", "VQAScore's question template ({} is the prompt) and answer",
                   annotation=VQAScoreSpec, default_factory=VQAScoreSpec)


def _asked(planned: PlannedPart) -> tuple[judge.JudgeSpec, VQAScoreSpec]:
    return (judge.judge_spec(planned.options.get("judge")),
            VQAScoreSpec.model_validate(planned.options.get("vqascore") or {}))


def _build(planned: PlannedPart, device: str) -> PartFn:
    judge_spec, asked = _asked(planned)
    model = judge.load_judge(judge_spec, device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p or "") for p in batch.get("prompt", [""] * len(images))]
        values = np.full(len(images), np.nan)
        errors = np.array(["no prompt"] * len(images), dtype=object)
        rows = [i for i, prompt in enumerate(prompts) if prompt]
        queries = [judge.Query(images[i], asked.question.replace("{}", prompts[i]),
                               tuple(asked.answers)) for i in rows]
        values[rows], errors[rows] = judge.judged(model, queries)
        return {"vqascore": values, "vqascore_error": errors}

    return part


def _check(planned: PlannedPart, spec: Any) -> str | None:
    return judge.check(_asked(planned)[0])


def _cache(planned: PlannedPart) -> dict[str, Any]:
    judge_spec, asked = _asked(planned)
    return judge.protocol(judge_spec, scorer="vqascore", version=VERSION,
                          question=asked.question, answers=asked.answers)


def vqascore(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """VQAScore (Lin et al. 2024): the judge's probability of "Yes" to "Does this figure show
    {prompt}?", averaged over the images."""
    has_prompt = np.array([bool(p) for p in scores.column("prompt")])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run: VQAScore asks whether an image shows its "
                          "prompt")
    values = np.asarray(scores.column("vqascore"), dtype=np.float64)
    failed = judge.first_failure(values[has_prompt],
                                 np.asarray(scores.column("vqascore_error"))[has_prompt])
    if failed:
        raise Unavailable(failed)
    return {"vqascore": mean_statistic(values, has_prompt, UNIT)}


UNITS = (
    Scorer("vqascore", "judge", _build, ("vqascore", "vqascore_error"),
           "the judge's probability that each image shows its prompt (VQAScore)",
           settings=(judge.JUDGE, VQASCORE), check=_check, cache=_cache),
    Metric("vqascore", "vqascore", True, Part("vqascore"),
           "probability a VLM judge answers Yes to 'does this figure show the prompt' (VQAScore)",
           vqascore),
)
