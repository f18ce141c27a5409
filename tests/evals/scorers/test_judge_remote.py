"""The judge's remote path against a real OpenAI-compatible server started here, serving the same
tiny VLM: the local path's scores to 1e-4; a server without logprobs, a slow one and a failing
one each give the rows as not judged with the reason (after retries where they help), never a
crash; a server that fails for a while is retried into an answer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import statistics
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.judge import JudgeSpec, Query
from darkroom.evals.scorers.judge_remote import RemoteJudge
from darkroom.evals.scorers.plan import plan_parts
from darkroom.evals.spec import EvalSpec
from tests.evals.judge_server import serving

pytestmark = pytest.mark.slow  # starts an HTTP server
PROMPTS = np.array(["a red fox", "an old map", "two cats on a sofa", "a bowl of soup"],
                   dtype=object)


def pictures(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (56, 56 + 8 * (i % 2), 3), dtype=np.uint8)
            for i in range(count)]


@pytest.fixture(scope="module")
def server(tiny_vlm_dir):
    with serving(tiny_vlm_dir) as (url, behaviour):
        yield url, behaviour


@pytest.fixture
def endpoint(server):
    """The server's URL, its behaviour reset for the test."""
    url, behaviour = server
    behaviour.__init__()
    return url, behaviour


def vqascore_part(judge: dict, **vqascore):
    spec = EvalSpec(metrics=["vqascore"], judge=judge, vqascore=vqascore or {})
    return build_part(plan_parts(spec)[0].parts[0])


def test_the_remote_path_gives_the_local_paths_scores(endpoint, tiny_vlm_dir):
    url, behaviour = endpoint
    local = vqascore_part({"model": str(tiny_vlm_dir)}, answers=["Yes", "yes", " yes"])
    remote = vqascore_part({"model": "tiny-vlm", "endpoint": url, "top_logprobs": 500,
                            "concurrency": 3}, answers=["Yes", "yes", " yes"])
    batch = {"prompt": PROMPTS}
    want = local(pictures(), batch)["vqascore"]
    got = remote(pictures(), batch)
    np.testing.assert_allclose(got["vqascore"], want, atol=1e-4)
    assert list(got["vqascore_error"]) == [""] * 4 and behaviour.requests == 4
    assert sorted(behaviour.questions) == sorted(
        f'Does this figure show "{p}"? Please answer Yes or No.' for p in PROMPTS)


def test_a_server_without_logprobs_is_named_and_not_retried(endpoint):
    url, behaviour = endpoint
    behaviour.logprobs = False
    part = vqascore_part({"model": "m", "endpoint": url, "retries": 3, "backoff_s": 0.01})
    out = part(pictures(), {"prompt": PROMPTS})
    assert np.isnan(out["vqascore"]).all() and behaviour.requests == 4
    assert "answered without logprobs" in out["vqascore_error"][0]
    assert "--max-logprobs" in out["vqascore_error"][0]
    columns = {"row_id": np.array(list("abcd"), dtype=object), "prompt": PROMPTS, **out}
    _, missing = statistics(RunScores("r", columns), Context(EvalSpec(metrics=["vqascore"])),
                            ["vqascore"])
    assert missing["vqascore"].startswith("4 of 4 image(s) could not be judged")


def test_a_slow_server_times_out_after_its_retries(endpoint):
    url, behaviour = endpoint
    behaviour.delay_s = 2.0
    judge = RemoteJudge(JudgeSpec(model="m", endpoint=url, timeout_s=0.3, retries=1,
                                  backoff_s=0.01, concurrency=2))
    start = time.monotonic()
    verdicts = judge.judge([Query(p, "Is it?", ("Yes",)) for p in pictures(2)])
    assert time.monotonic() - start < 2.0  # two at a time, 2 tries of 0.3 s each
    assert all(np.isnan(v.probability) for v in verdicts)
    assert "no answer within 0.3 s (after 2 tries)" in verdicts[0].error


def test_a_failing_server_is_retried_then_given_up(endpoint):
    url, behaviour = endpoint
    behaviour.fail_always = True
    judge = RemoteJudge(JudgeSpec(model="m", endpoint=url, retries=2, backoff_s=0.01,
                                  concurrency=1, give_up_after=2))
    verdicts = judge.judge([Query(p, "Is it?", ("Yes",)) for p in pictures(4)])
    assert all(np.isnan(v.probability) for v in verdicts)
    assert "HTTP 503" in verdicts[0].error and "(after 3 tries)" in verdicts[0].error
    # two questions failed their three tries; the other two were not sent
    assert behaviour.requests == 6 and "the rest were not sent" in verdicts[3].error


def test_a_server_failing_for_a_while_is_retried_into_an_answer(endpoint, tiny_vlm_dir):
    url, behaviour = endpoint
    behaviour.fail_first, behaviour.status = 2, 429
    remote = vqascore_part({"model": "m", "endpoint": url, "retries": 3, "backoff_s": 0.01,
                            "concurrency": 1, "top_logprobs": 500})
    local = vqascore_part({"model": str(tiny_vlm_dir)})
    got = remote(pictures(1), {"prompt": PROMPTS[:1]})
    assert got["vqascore_error"][0] == "" and behaviour.requests == 3
    assert got["vqascore"][0] == pytest.approx(
        local(pictures(1), {"prompt": PROMPTS[:1]})["vqascore"][0], abs=1e-4)


def test_a_refused_request_is_not_retried(endpoint):
    url, behaviour = endpoint
    behaviour.fail_always, behaviour.status = True, 400
    judge = RemoteJudge(JudgeSpec(model="m", endpoint=url, retries=3, backoff_s=0.01))
    verdict = judge.judge([Query(pictures(1)[0], "Is it?", ("Yes",))])[0]
    assert behaviour.requests == 1 and "HTTP 400" in verdict.error
    assert "tries" not in verdict.error


def test_nothing_listening_is_a_reason(endpoint):
    from tests.evals.judge_server import free_port

    judge = RemoteJudge(JudgeSpec(model="m", endpoint=f"http://127.0.0.1:{free_port()}/v1",
                                  retries=1, backoff_s=0.01))
    verdict = judge.judge([Query(pictures(1)[0], "Is it?", ("Yes",))])[0]
    assert np.isnan(verdict.probability) and "Connection" in verdict.error
