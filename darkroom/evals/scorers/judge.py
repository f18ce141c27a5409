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
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.evals.units import Setting, WeightsMissing
from darkroom.platform.models.names import looks_local

DEFAULT_JUDGE = "Qwen/Qwen2.5-VL-7B-Instruct"
API_KEY_ENV = "DARKROOM_JUDGE_API_KEY"


class JudgeSpec(BaseModel):
    """`eval.judge`: which vision-language model judges, and where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(DEFAULT_JUDGE, description="a local folder or hub id (local path), or "
                       "the model name the endpoint serves (remote path)")
    endpoint: str | None = Field(None, description="an OpenAI-compatible base URL "
                                 "(http://host:8000/v1): judge there instead of on the actors")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="local path: the weights' dtype (auto: as saved)")
    batch_size: int = Field(8, ge=1, le=1024, description="local path: questions per forward")
    concurrency: int = Field(8, ge=1, le=1024,
                             description="remote path: requests in flight per scoring actor")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="remote path: per request")
    retries: int = Field(3, ge=0, le=20, description="remote path: tries after the first, with "
                         "exponential backoff, on timeouts, refused connections, 429 and 5xx")
    backoff_s: float = Field(1.0, ge=0, le=600, description="remote path: the first wait")
    top_logprobs: int = Field(20, ge=1, le=1000, description="remote path: alternatives the "
                              "endpoint lists per position; an answer outside them counts 0")
    give_up_after: int = Field(8, ge=1, le=100_000, description="remote path: after this many "
                               "questions in a row failed their retries, the rest of the "
                               "actor's questions fail at once with the same reason")
    api_key_env: str = Field(API_KEY_ENV, description="remote path: the environment variable "
                             "holding the endpoint's API key (sent as a bearer token when set)")


JUDGE = Setting("judge", "the vision-language model of the judged metrics (vqascore, "
                "qa_alignment): {model, endpoint, ...}", annotation=JudgeSpec,
                default_factory=JudgeSpec)


@dataclass(frozen=True)
class Query:
    """One question about one image; `answers` are the forms of the answer whose first tokens'
    probabilities are summed (each token once)."""

    image: np.ndarray
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """The probability of the answer (NaN when the question could not be judged, with why)."""

    probability: float
    error: str = ""


def judge_spec(value: Any) -> JudgeSpec:
    """`eval.judge` as a JudgeSpec (a plan carries it as plain data)."""
    return value if isinstance(value, JudgeSpec) else JudgeSpec.model_validate(value or {})


def check(spec: JudgeSpec) -> str | None:
    """On the driver, before any image is read: why the judge cannot run here, or None."""
    if spec.endpoint is None and looks_local(spec.model) and not (
            Path(spec.model).expanduser() / "config.json").is_file():
        return (f"judge folder `{spec.model}` has no config.json: give a folder saved with "
                "save_pretrained (model and processor), a hub id, or `judge.endpoint`")
    return None


def identity(spec: JudgeSpec) -> dict[str, Any]:
    """What the judge's answers depend on, for the score cache: the path, the model and, for a
    local folder, its small files' contents and its weight files' sizes and times."""
    if spec.endpoint is not None:
        return {"path": "remote", "model": spec.model, "top_logprobs": spec.top_logprobs}
    found: dict[str, Any] = {"path": "local", "model": spec.model, "dtype": spec.dtype}
    folder = Path(spec.model).expanduser()
    if looks_local(spec.model) and folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            if stat.st_size < (1 << 20):
                digest.update(path.name.encode() + path.read_bytes())
            else:  # weights: hashing gigabytes per evaluation costs more than it tells
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        found["files_sha256"] = digest.hexdigest()
    return found


def answer_token_ids(tokenizer: Any, forms: Sequence[str]) -> tuple[int, ...]:
    """The first token of each answer form, each once (GenEval 2 reads `encode(form)[0]`)."""
    ids = []
    for form in forms:
        encoded = tokenizer.encode(form, add_special_tokens=False)
        if encoded and encoded[0] not in ids:
            ids.append(encoded[0])
    return tuple(ids)


def messages(question: str, image: Any) -> list[dict[str, Any]]:
    """The chat of one question: a user turn with the image, then the question."""
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": question}]}]


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class LocalJudge:
    """A transformers image-text-to-text model and its processor, run here (one per process:
    `load_judge`)."""

    def __init__(self, spec: JudgeSpec, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec, self.device = spec, device
        name = str(Path(spec.model).expanduser()) if looks_local(spec.model) else spec.model
        reason = check(spec)
        if reason:
            raise WeightsMissing(reason)
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, DTYPES[spec.dtype])
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).eval()
            self.processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise WeightsMissing(
                f"judge `{spec.model}` could not be loaded ({str(err).splitlines()[0][:200]}); "
                "download it where there is network (`hf download ...`) and give its folder as "
                "`judge.model`, or serve it and give `judge.endpoint`") from err
        self.model.to(device)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "right"  # real tokens keep their positions
        self.chat = getattr(self.processor, "chat_template", None) is not None

    def prompt(self, question: str) -> str:
        """The text the model reads: its chat template around the image and question, up to
        the assistant's first token (no chat template, as PaliGemma: the question alone)."""
        if not self.chat:
            return question
        return self.processor.apply_chat_template(messages(question, None),
                                                  add_generation_prompt=True, tokenize=False)

    def judge(self, queries: Sequence[Query]) -> list[Verdict]:
        """The probability of each query's answer, in batches of `batch_size`."""
        out: list[Verdict] = []
        for start in range(0, len(queries), self.spec.batch_size):
            chunk = queries[start:start + self.spec.batch_size]
            probs = self.next_token_probabilities(chunk)
            for query, row in zip(chunk, probs, strict=True):
                ids = list(answer_token_ids(self.tokenizer, query.answers))
                out.append(Verdict(float(row[ids].sum()) if ids else 0.0))
        return out

    def next_token_probabilities(self, queries: Sequence[Query]) -> np.ndarray:
        """softmax over the vocabulary at the last prompt position, one row per query."""
        import torch
        from PIL import Image

        images = [Image.fromarray(np.asarray(q.image, np.uint8)) for q in queries]
        inputs = self.processor(images=images, text=[self.prompt(q.question) for q in queries],
                                padding=True, return_tensors="pt").to(self.device)
        mask = inputs["attention_mask"]
        last = mask.sum(dim=1) - 1
        with torch.inference_mode():
            try:  # only the positions read are projected onto the vocabulary
                logits = self.model(**inputs, logits_to_keep=last[:, None]).logits[:, 0]
            except TypeError:  # a model without logits_to_keep: count back from the end
                logits = self.model(**inputs).logits
                padding = mask.shape[1] - mask.sum(dim=1)
                rows = torch.arange(len(queries), device=logits.device)
                logits = logits[rows, logits.shape[1] - 1 - padding.to(logits.device)]
        return logits.float().softmax(dim=-1).cpu().numpy().astype(np.float64)


@functools.cache
def _loaded(spec_json: str, device: str) -> Any:
    spec = JudgeSpec.model_validate_json(spec_json)
    if spec.endpoint is not None:
        from darkroom.evals.scorers.judge_remote import RemoteJudge

        return RemoteJudge(spec)
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
