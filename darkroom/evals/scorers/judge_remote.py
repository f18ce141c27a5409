"""The judge's remote path: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, or any
server of that API) asked for one token with `logprobs` and `top_logprobs`.

Each question is one request: the image as a PNG data URL, then the question, as the local path
lays them out; `max_tokens: 1`, `temperature: 0`. The probability of an answer is the sum of
exp(logprob) over the `top_logprobs` entries of the first position whose token is one of its
forms (an answer the endpoint does not list counts 0). Requests run `concurrency` at a time;
timeouts, refused connections, 429 and 5xx are retried with exponential backoff (a `Retry-After`
is honoured); other errors, and an answer without logprobs, are not. A question that still
fails is NaN with the reason. After `give_up_after` failures in a row the endpoint is taken to be
down: the rest fail at once with the same reason rather than each waiting out its retries.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from darkroom.evals.scorers.judge_spec import JudgeSpec, Query, Verdict

RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NO_LOGPROBS = ("the endpoint answered without logprobs (choices[0].logprobs.content[0]"
               ".top_logprobs): the judge needs them; serve the model with logprobs enabled "
               "(vLLM: `--max-logprobs {k}` or more; SGLang returns them when asked)")


class Failed(Exception):
    """A request that failed; `retry` when trying again may help."""

    def __init__(self, reason: str, retry: bool, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


def data_url(image: np.ndarray) -> str:
    """The image as a base64 PNG data URL (lossless: the endpoint sees the same pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(spec: JudgeSpec, query: Query) -> dict[str, Any]:
    """The chat-completions request of one question."""
    return {
        "model": spec.model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(query.image)}},
            {"type": "text", "text": query.question}]}],
        "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": spec.top_logprobs,
    }


def answer_probability(body: Any, forms: Sequence[str], top_logprobs: int) -> float:
    """The probability of an answer from a chat-completions response; `Failed` (not retried)
    when the response has no logprobs."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
        listed = first["top_logprobs"]
        if not listed:
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise Failed(NO_LOGPROBS.format(k=top_logprobs), retry=False) from None
    wanted = set(forms)
    seen: set[str] = set()
    total = 0.0
    for entry in listed:
        token = entry.get("token")
        if token in wanted and token not in seen:
            seen.add(token)
            total += math.exp(float(entry["logprob"]))
    return total


class RemoteJudge:
    """An OpenAI-compatible chat-completions endpoint as a judge (thread-safe)."""

    def __init__(self, spec: JudgeSpec) -> None:
        self.spec = spec
        self.url = spec.endpoint.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(spec.api_key_env)
        self.lock = threading.Lock()
        self.failures_in_a_row = 0
        self.down: str | None = None  # why the rest fail at once

    def judge(self, queries: Sequence[Query]) -> list[Verdict]:
        """Every query, `concurrency` at a time, in order."""
        with ThreadPoolExecutor(max_workers=min(self.spec.concurrency, len(queries) or 1),
                                thread_name_prefix="judge") as pool:
            return list(pool.map(self._one, queries))

    def _one(self, query: Query) -> Verdict:
        if self.down is not None:
            return Verdict(math.nan, self.down)
        try:
            probability = self._ask(query)
        except Failed as err:
            reason = f"{self.url}: {err.reason}"
            with self.lock:
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= self.spec.give_up_after and self.down is None:
                    self.down = (f"{reason} (and {self.failures_in_a_row - 1} question(s) before "
                                 "it; the rest were not sent)")
            return Verdict(math.nan, reason)
        with self.lock:
            self.failures_in_a_row = 0
        return Verdict(probability)

    def _ask(self, query: Query) -> float:
        payload = json.dumps(request_body(self.spec, query)).encode()
        tries = self.spec.retries + 1
        for attempt in range(tries):
            try:
                body = self._post(payload)
                return answer_probability(body, query.answers, self.spec.top_logprobs)
            except Failed as err:
                if not err.retry or attempt == tries - 1:
                    suffix = f" (after {tries} tries)" if err.retry and tries > 1 else ""
                    raise Failed(err.reason + suffix, err.retry) from None
                pause = self.spec.backoff_s * 2 ** attempt * (0.5 + random.random() / 2)
                time.sleep(err.wait if err.wait is not None else pause)
        raise AssertionError("unreachable")

    def _post(self, payload: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", errors="replace")
            wait = _retry_after(err.headers.get("Retry-After"))
            raise Failed(f"HTTP {err.code}: {detail}", err.code in RETRIED_STATUS,
                         wait) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            what = (f"no answer within {self.spec.timeout_s:g} s"
                    if isinstance(reason, TimeoutError) or "timed out" in str(reason)
                    else f"{type(reason).__name__}: {reason}")
            raise Failed(what, retry=True) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise Failed(f"the answer is not JSON: {raw[:200]!r}", retry=True) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
