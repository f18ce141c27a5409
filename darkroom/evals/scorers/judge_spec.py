"""The judge's settings (`eval.judge`), its questions and answers, and what can be told about a
judge without loading it: why it cannot run here, and the identity its cached answers keep."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.evals.units import Setting
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
