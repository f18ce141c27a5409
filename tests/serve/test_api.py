"""The HTTP API in-process: the FastAPI app of `build_api` through an ASGI client, with a fake
generator in place of the model deployment. No Ray, no Serve: auth, OpenAI-shaped 400/401/408/
413/500/503s, `/v1/models`, what a request becomes (its rows), slow clients driven straight
through ASGI, and responses checked against OpenAI's schema and its Python client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from typing import Any

import httpx
import pytest

from darkroom.platform.data.records import encode_png
from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.guards import Gate
from darkroom.serve.ingress import IngressSettings, Overloaded, build_api
from darkroom.serve.protocol import Limits
from tests.serve.openai_schema import assert_error_response, assert_images_response

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))


class FakeModel:
    """Stands in for the model deployment: records the rows, answers like a replica."""

    def __init__(self) -> None:
        self.rows: list[RequestRow] = []
        self.overloaded = False
        self.error: tuple[str, str | None] | None = None
        self.status = 400  # of `error`: 400 bad input, 500 the replica failed on the row
        self.flagged = False

    async def __call__(self, rows: list[RequestRow]) -> list[dict[str, Any]]:
        if self.overloaded:
            raise Overloaded("queue full")
        self.rows += rows
        withheld = self.error or self.flagged
        return [{"image": None if withheld else PNG, "error": self.error and self.error[0],
                 "param": self.error and self.error[1], "status": self.status, "seed": r.seed,
                 "width": r.width or 8, "height": r.height or 8, "batch_size": len(rows),
                 "flagged": self.flagged, "safety_score": 0.9 if self.flagged else 0.0}
                for r in rows]


def settings(**changes) -> IngressSettings:
    values = dict(model_id="tiny:sd", limits=Limits(max_n=4, max_steps=4, max_side=64,
                                                     max_prompt_chars=200, body_timeout_s=0.5),
                  samplers=["ddim", "dpmpp_2m"], conditioning="text", adapters=["style"],
                  api_key_sha256=hashlib.sha256(KEY.encode()).hexdigest())
    return IngressSettings(**{**values, **changes})


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def app(model):
    return build_api(settings(), model, Gate(retry_after="1"))


def test_a_request_becomes_one_row_per_image_with_consecutive_seeds(app, model):
    response = call(app, "POST", "/v1/images/generations", headers=AUTH, json={
        "prompt": "a fox", "n": 3, "size": "32x16", "seed": 5, "steps": 2,
        "negative_prompt": "blur", "lora": "style", "lora_scale": 0.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["seed"] for d in body["data"]] == [5, 6, 7]
    assert base64.b64decode(body["data"][0]["b64_json"]) == PNG
    assert [(r.width, r.height, r.steps, r.adapters, r.lora_scale) for r in model.rows] == [
        (32, 16, 2, ["style"], 0.5)] * 3
    assert {r.negative_prompt for r in model.rows} == {"blur"}


def test_health_is_open_and_everything_else_needs_the_key(app):
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, path, kwargs in (("GET", "/v1/models", {}),
                                     ("POST", "/v1/images/generations",
                                      {"json": {"prompt": "x"}})):
            response = call(app, method, path, headers=headers, **kwargs)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"


def test_models_lists_the_base_and_each_adapter(app):
    ids = [m["id"] for m in call(app, "GET", "/v1/models", headers=AUTH).json()["data"]]
    assert ids == ["tiny:sd", "tiny:sd:style"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "x", "n": 5}, "n", "less than or equal to 4"),
        ({"prompt": "x", "steps": 9}, "steps", "less than or equal to 4"),
        ({"prompt": "x", "size": "128x128"}, "size", "8..64"),
        ({"prompt": "x" * 201}, "prompt", "at most 200"),
        ({"prompt": "x", "sampler": "dpmpp2m"}, "sampler", "did you mean `dpmpp_2m`"),
        ({"prompt": "x", "response_format": "url"}, "response_format", "b64_json"),
        ({"prompt": "x", "model": "dall-e-3"}, "model", "tiny:sd"),
        ({"prompt": "x", "quality": "hd"}, "quality", "unknown field"),
        ({"n": 1}, "prompt", "Field required"),
        ({"prompt": "x", "class_label": 3}, "class_label", "is text-conditioned"),
        ({"prompt": "x", "lora": "stile"}, "lora", "did you mean `style`"),
        ({"prompt": "x", "lora_scale": 0.5}, "lora_scale", "needs an adapter"),
    ],
)
def test_bad_input_is_a_400_that_names_the_field(app, model, body, param, words):
    response = call(app, "POST", "/v1/images/generations", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert not model.rows  # refused before any work


def test_a_row_the_model_refuses_is_a_400_naming_its_field(app, model):
    model.error = ("`width` must be a positive multiple of 8", "size")
    response = call(app, "POST", "/v1/images/generations", headers=AUTH,
                    json={"prompt": "x", "size": "30x30"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"


def test_a_body_that_is_not_json_is_a_400(app):
    response = call(app, "POST", "/v1/images/generations", content=b"{not json",
                    headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_a_body_over_the_limit_is_a_413_declared_or_not(app, model):
    big = b'{"prompt": "' + b"x" * (2**20 + 10) + b'"}'
    declared = call(app, "POST", "/v1/images/generations", content=big,
                    headers={**AUTH, "Content-Type": "application/json"})

    async def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    chunked = call(app, "POST", "/v1/images/generations", content=chunks(),
                   headers={**AUTH, "Content-Type": "application/json"})
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert not model.rows


def test_an_overloaded_model_is_a_503_with_retry_after(app, model):
    model.overloaded = True
    response = call(app, "POST", "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"


def test_a_draining_server_refuses_new_requests_with_a_503(model):
    gate = Gate(retry_after="2")
    app = build_api(settings(), model, gate)
    asyncio.run(gate.drain(0.0))
    response = call(app, "POST", "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "shutting_down"


def test_a_row_the_model_failed_on_is_a_500_in_openais_shape(app, model):
    model.error, model.status = ("generating this image failed (TypeError)", None), 500
    response = call(app, "POST", "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert response.status_code == 500
    assert_error_response(response.json())
    assert response.json()["error"]["type"] == "server_error"


# -- slow clients ------------------------------------------------------------------------------


async def drive(app, headers: dict[str, str], chunks: list[bytes], ends: bool,
                path: str = "/v1/images/generations", gap_s: float = 0.0,
                wait_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One request straight through ASGI, as a real client's bytes reach the app: `chunks`
    `gap_s` apart, then the end of the body if `ends`, else nothing ever again (a client that
    stalls and keeps its connection). Returns the status, headers and body of the answer, or
    fails after `wait_s` without one."""
    incoming: asyncio.Queue = asyncio.Queue()
    answer: dict[str, Any] = {"body": b""}
    done = asyncio.Event()

    async def feed() -> None:
        for chunk in chunks:
            await asyncio.sleep(gap_s)
            incoming.put_nowait({"type": "http.request", "body": chunk, "more_body": True})
        if ends:
            incoming.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 40000),
             "server": ("api", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    feeder = asyncio.ensure_future(feed())
    task = asyncio.ensure_future(app(scope, incoming.get, send))
    try:
        await asyncio.wait_for(done.wait(), wait_s)
    except TimeoutError:
        pytest.fail(f"no answer within {wait_s} s")
    finally:
        for running in (feeder, task):
            running.cancel()
    return answer["status"], answer["headers"], answer["body"]


STALLED = {"Content-Type": "application/json", "Content-Length": "1000"}


def test_without_the_key_a_request_is_refused_before_its_body(app, model):
    """300 clients send headers and 11 bytes of a declared 1,000-byte body, then nothing: each
    is answered 401 at once, without the app waiting for the body; an authenticated request
    among them is served."""

    async def go() -> tuple[list, tuple, float]:
        started = time.monotonic()
        stalled = [drive(app, STALLED, [b'{"prompt": '], ends=False, wait_s=10)
                   for _ in range(300)]
        served = drive(app, {**AUTH, "Content-Type": "application/json"},
                       [b'{"prompt": "a fox"}'], ends=True, wait_s=10)
        *refused, ok = await asyncio.gather(*stalled, served)
        return refused, ok, time.monotonic() - started

    refused, ok, took = asyncio.run(go())
    assert {status for status, _, _ in refused} == {401}
    for _, headers, body in refused[:3]:
        assert headers["www-authenticate"] == "Bearer"
        assert_error_response(json.loads(body))
    assert ok[0] == 200, ok
    assert took < 8, took  # each answer came at once: none waited for the body (0.5 s here)
    assert len(model.rows) == 1


@pytest.mark.parametrize(("chunks", "gap_s"), [([b'{"prompt": '], 0.0),  # then nothing
                                               ([b" "] * 100, 0.05)])  # a byte every 50 ms
def test_a_body_that_does_not_arrive_in_time_is_a_408(app, model, chunks, gap_s):
    """With the key, a body that stalls, or that trickles in without end, is cut off
    `limits.body_timeout_s` (0.5 s here) after the request began."""
    started = time.monotonic()
    status, headers, body = asyncio.run(drive(
        app, {**AUTH, **STALLED}, chunks, ends=False, gap_s=gap_s))
    took = time.monotonic() - started
    assert status == 408, body
    assert_error_response(json.loads(body))
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers.get("connection") == "close"
    assert 0.4 < took < 3, took
    assert not model.rows


def test_a_body_that_arrives_slowly_but_in_time_is_served(app, model):
    body = b'{"prompt": "a fox"}'
    status, _, answer = asyncio.run(drive(
        app, {**AUTH, "Content-Type": "application/json"}, [bytes([b]) for b in body],
        ends=True, gap_s=0.01))
    assert status == 200, answer


# -- text that is not Unicode ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "sampler", "lora", "model",
                                   "user", "size", "class_label"])
def test_a_lone_surrogate_is_a_400_naming_the_field(model, field):
    """`"\\ud800"` is valid JSON but not Unicode text: a 400 naming the field, in OpenAI's
    shape and in valid UTF-8, never a 500."""
    app = build_api(settings(conditioning=None), model)  # one that takes class_label
    body = json.dumps({"prompt": "x", field: "\ud800"})  # sent as the escape \\ud800
    response = call(app, "POST", "/v1/images/generations", content=body.encode(),
                    headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = json.loads(response.content.decode("utf-8"))  # strict: a surrogate would raise
    assert_error_response(error)
    assert error["error"]["param"] == field, error
    assert "\\ud800" in error["error"]["message"], error  # what was sent, shown escaped
    assert not model.rows


def test_errors_never_carry_text_that_is_not_unicode(app):
    key = call(app, "POST", "/v1/images/generations", content=b'{"prompt": "x", "\\udfff": 1}',
               headers={**AUTH, "Content-Type": "application/json"})
    assert key.status_code == 400
    assert "field name is not Unicode text (got '\\udfff')" in key.json()["error"]["message"]
    not_utf8 = call(app, "POST", "/v1/images/generations", content=b'{"prompt": "\xff"}',
                    headers={**AUTH, "Content-Type": "application/json"})
    assert not_utf8.status_code == 400
    assert_error_response(not_utf8.json())
    from darkroom.serve.guards import openai_error

    rendered = openai_error(400, "unknown thing `\udfff`", "invalid_request_error").body
    assert "\\udfff" in json.loads(rendered.decode("utf-8"))["error"]["message"]


# -- responses in OpenAI's schema --------------------------------------------------------------


def test_responses_fit_openais_schema_and_a_flagged_image_is_a_blank_png(app, model):
    """The official client reads every image with the docs' own decode line; a flagged image
    is a black PNG of the image's size (flagged: true), never `b64_json: null`."""
    from openai import AsyncOpenAI
    from PIL import Image

    async def generate() -> tuple[Any, dict]:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        client = AsyncOpenAI(base_url="http://api/v1", api_key=KEY, http_client=http,
                             max_retries=0)
        async with http:
            result = await client.images.generate(prompt="a fox", n=2, size="32x16",
                                                  response_format="b64_json")
            raw = await http.post("/v1/images/generations", headers=AUTH,
                                  json={"prompt": "a fox", "size": "32x16"})
        return result, raw.json()

    result, raw = asyncio.run(generate())
    assert base64.b64decode(result.data[0].b64_json) == PNG
    assert_images_response(raw)
    assert "revised_prompt" not in raw["data"][0] and result.data[0].revised_prompt is None
    assert (raw["width"], raw["height"]) == (32, 16) and "size" not in raw  # not OpenAI's size
    model.flagged = True
    result, raw = asyncio.run(generate())
    assert_images_response(raw)
    for item in result.data:
        png = base64.b64decode(item.b64_json)  # the docs' decode line
        image = Image.open(io.BytesIO(png))
        assert image.size == (32, 16) and not any(image.convert("L").getdata())
        assert item.model_extra["flagged"] is True and item.model_extra["safety_score"] == 0.9
