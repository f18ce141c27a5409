"""The HTTP API in-process: the FastAPI app of `build_api` through an ASGI client, with a fake
generator in place of the model deployment. No Ray, no Serve: auth, OpenAI-shaped 400/401/413/
503s, `/v1/models`, and what a request becomes (its rows)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import httpx
import pytest

from darkroom.platform.data.records import encode_png
from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.guards import Gate
from darkroom.serve.ingress import IngressSettings, Overloaded, build_api
from darkroom.serve.protocol import Limits

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))


class FakeModel:
    """Stands in for the model deployment: records the rows, answers like a replica."""

    def __init__(self) -> None:
        self.rows: list[RequestRow] = []
        self.overloaded = False
        self.error: tuple[str, str | None] | None = None

    async def __call__(self, rows: list[RequestRow]) -> list[dict[str, Any]]:
        if self.overloaded:
            raise Overloaded("queue full")
        self.rows += rows
        return [{"image": None if self.error else PNG, "error": self.error and self.error[0],
                 "param": self.error and self.error[1], "seed": r.seed, "width": r.width or 8,
                 "height": r.height or 8, "batch_size": len(rows), "flagged": False,
                 "safety_score": 0.0} for r in rows]


def settings(**changes) -> IngressSettings:
    values = dict(model_id="tiny:sd", limits=Limits(max_n=4, max_steps=4, max_side=64,
                                                     max_prompt_chars=200),
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
