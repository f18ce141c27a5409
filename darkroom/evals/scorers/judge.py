"""The judge: a vision-language model asked a question about an image, read as the probability
of an answer. Judged metrics (VQAScore, question-based alignment, judge-based rewards) ask it.

A question is scored as t2v_metrics (Lin et al. 2024) and GenEval 2's Soft-TIFA read a VLM: the
chat template's user turn holds the image and the question, and the probability of the answer is
the softmax, over the whole vocabulary, of the first token the model would write (`probability`
of a `Query`: the sum over its answer forms' first tokens, e.g. `Yes` and ` yes`, each counted
once).

Two paths give the same number for the same model:

- local (`judge.model` only): any transformers image-text-to-text model
  (`AutoModelForImageTextToText` with its processor's chat template: Qwen2/2.5-VL,
  LLaVA-OneVision, SmolVLM, PaliGemma, ...) on the scoring actors, batched, the probabilities
  read from the logits of the last prompt position;
- remote (`judge.endpoint` too): any OpenAI-compatible chat-completions endpoint that returns
  `logprobs` with `top_logprobs` (vLLM and SGLang serve VLMs so), called with bounded
  concurrency, timeouts and retries (`judge_remote.py`).

A query that cannot be judged (the endpoint fails after its retries, or answers without
logprobs) comes back as NaN with the reason; the metric is then missing with that reason, never
0, and the next evaluation asks only what is missing (per-row score cache).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from darkroom.evals.scorers.judge_spec import (
    JUDGE,
    JudgeSpec,
    Query,
    Verdict,
    check,
    identity,
    judge_spec,
)

__all__ = ["JUDGE", "JudgeSpec", "Query", "Verdict", "check", "first_failure", "identity",
           "judge_spec", "judged", "load_judge", "protocol"]


@functools.cache
def _loaded(spec_json: str, device: str) -> Any:
    spec = JudgeSpec.model_validate_json(spec_json)
    if spec.endpoint is not None:
        from darkroom.evals.scorers.judge_remote import RemoteJudge

        return RemoteJudge(spec)
    from darkroom.evals.scorers.judge_local import LocalJudge

    return LocalJudge(spec, device)


def load_judge(spec: JudgeSpec | dict, device: str = "cpu") -> Any:
    """The judge of these settings, loaded once per process (the metrics that ask it share the
    one model on an actor)."""
    return _loaded(judge_spec(spec).model_dump_json(), device)


def judged(judge: Any, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, reasons) of the queries: NaN and the reason where one failed."""
    verdicts = judge.judge(queries) if queries else []
    values = np.array([v.probability for v in verdicts], dtype=np.float64)
    errors = np.array([v.error for v in verdicts], dtype=object)
    return values, errors


def first_failure(values: np.ndarray, errors: np.ndarray) -> str | None:
    """A sentence on the rows that were not judged (how many, the first reason), or None."""
    bad = [i for i in range(len(values)) if not np.isfinite(values[i]) or errors[i]]
    if not bad:
        return None
    reason = next((str(errors[i]) for i in bad if errors[i]), "no probability came back")
    return (f"{len(bad)} of {len(values)} image(s) could not be judged ({reason}); "
            "`darkroom eval` again asks the judge only what is missing")


def protocol(spec: JudgeSpec, **extra: Any) -> dict[str, Any]:
    """The cache identity of a judged part: the judge's identity and what it is asked."""
    return {"judge": identity(spec), **extra}
