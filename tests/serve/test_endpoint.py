"""The endpoint on a real `serve.run` (shared local Ray), called over real HTTP.

Apps: `sd` (tiny SD, safety on, API key), `dit` (tiny DiT, a threshold that flags every image,
tight queue limits for overload), `scale` (autoscaling 1 -> 2 -> 1), `digits` (where its weights
exist).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.serve.app import build_app
from darkroom.serve.ingress import BATCH_HEADER
from tests.serve.openai_schema import assert_error_response, assert_images_response

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY_ENV = "DARKROOM_TEST_SERVE_KEY"
KEY = "sk-darkroom-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SMALL = {"num_cpus": 0.5}  # logical CPUs: several apps share the 4 of the test session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def serve_url(ray_session):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def deploy(base: str, name: str, spec: dict) -> str:
    from ray import serve

    serve.run(build_app(spec), name=name, route_prefix=f"/{name}")
    return f"{base}/{name}"


@pytest.fixture(scope="module")
def sd(serve_url):
    os.environ[KEY_ENV] = KEY  # read where the app is built; only its digest is shipped
    try:
        yield deploy(serve_url, "sd", {
            "model": {"model": "tiny:sd"},
            "defaults": {"sampler": "ddim", "steps": 2, "guidance_scale": 3.0},
            "limits": {"max_n": 4, "max_steps": 4, "max_side": 64, "max_prompt_chars": 200,
                       "body_timeout_s": 2},
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2},
            "max_ongoing_requests": 16,
            "resources": SMALL,
            "runtime": {"device": "cpu"},
            "auth": {"api_key_env": KEY_ENV},
        })
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def dit(serve_url):
    return deploy(serve_url, "dit", {
        "model": {"model": "tiny:dit"},
        "defaults": {"steps": 4},
        "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.01},
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,  # room for a burst of 16 at once; 40 overload it
        "retry_after_s": 2,
        "resources": SMALL,
        "runtime": {"device": "cpu"},
        "safety": {"checker": "nudenet", "threshold": 0.0},  # every score >= 0: all flagged
    })


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


async def post_many(url: str, bodies: list[dict], headers: dict | None = None) -> list:
    async with httpx.AsyncClient(timeout=120, headers=headers) as http:
        return await asyncio.gather(*(http.post(url, json=b) for b in bodies))


# -- the OpenAI API ----------------------------------------------------------------------------


def test_openai_client_gets_images_of_the_asked_size(sd) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{sd}/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(
        prompt="a red fox", n=2, size="48x32", response_format="b64_json",
        extra_body={"seed": 7, "steps": 2, "negative_prompt": "blur"},
    )
    assert len(result.data) == 2
    images = [decode(item.b64_json) for item in result.data]
    assert all(image.shape == (32, 48, 3) for image in images)
    assert [item.model_extra["seed"] for item in result.data] == [7, 8]
    assert not np.array_equal(images[0], images[1])  # different seeds, different noise
    assert [m.id for m in client.models.list().data] == ["tiny:sd"]


def test_health_is_open_but_the_api_needs_the_key(sd) -> None:
    assert httpx.get(f"{sd}/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for response in (httpx.get(f"{sd}/v1/models", headers=headers),
                         httpx.post(f"{sd}/v1/images/generations", headers=headers,
                                    json={"prompt": "x"})):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{sd}/v1/models", headers=AUTH).status_code == 200
    assert "/v1/images/generations" in httpx.get(f"{sd}/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "x", "n": 5}, "n", "less than or equal to 4"),
        ({"prompt": "x", "steps": 9}, "steps", "less than or equal to 4"),
        ({"prompt": "x", "size": "128x128"}, "size", "8..64"),
        ({"prompt": "x", "size": "30x30"}, None, "multiple of 8"),
        ({"prompt": "x" * 201}, "prompt", "at most 200"),
        ({"prompt": "x", "sampler": "dpmpp2m"}, "sampler", "did you mean `dpmpp_2m`"),
        ({"prompt": "x", "response_format": "url"}, "response_format", "b64_json"),
        ({"prompt": "x", "model": "dall-e-3"}, "model", "tiny:sd"),
        ({"prompt": "x", "quality": "hd"}, "quality", "unknown field"),
        ({"n": 1}, "prompt", "Field required"),
        ({"prompt": "x", "class_label": 3}, "class_label", "is text-conditioned"),
        ({"prompt": "x", "sampler": ""}, "sampler", "unknown sampler ``"),
    ],
)
def test_bad_input_is_a_400_that_names_the_field(sd, body, param, words) -> None:
    response = httpx.post(f"{sd}/v1/images/generations", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_a_400(sd) -> None:
    response = httpx.post(f"{sd}/v1/images/generations", content=b"{not json",
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_the_model_replica_refuses_class_label_where_the_ingress_cannot_tell() -> None:
    """For a hub id the family is known only once the replica has loaded the model, so the
    ingress's schema takes `class_label`: the replica refuses it for a text model, naming it."""
    from darkroom.serve.model import ImageModel
    from darkroom.serve.spec import ServeSpec

    spec = ServeSpec.model_validate({"model": {"model": "tiny:sd"}, "defaults": {"steps": 2},
                                     "runtime": {"device": "cpu"}, "safety": {"on": False}})

    async def ask() -> dict:
        model = ImageModel.func_or_class(spec.model_dump(mode="json"))  # in this process
        return await model.generate({"seed": 1, "prompt": "a fox", "class_label": 3})

    answer = asyncio.run(ask())
    assert answer["param"] == "class_label" and answer["image"] is None
    assert "tiny:sd is text-conditioned" in answer["error"]


def test_every_sampler_the_schema_offers_is_served(sd) -> None:
    """A client that follows /openapi.json is never refused for `sampler`."""
    schema = httpx.get(f"{sd}/openapi.json").json()["components"]["schemas"]
    sampler = schema["ImageGenerationRequest"]["properties"]["sampler"]
    names = next(option["enum"] for option in sampler["anyOf"] if "enum" in option)
    assert "" not in names and "ddim" in names
    bodies = [{"prompt": "a fox", "sampler": name, "size": "32x32", "seed": 1} for name in names]
    responses = asyncio.run(post_many(f"{sd}/v1/images/generations", bodies, AUTH))
    refused = {name: r.text for name, r in zip(names, responses, strict=True)
               if r.status_code != 200}
    assert not refused, refused


# -- the request-size limit --------------------------------------------------------------------

MiB = 2**20


def ray_process(title: str):
    """The one process of this session's local Ray (a descendant of this process) whose title,
    set by Ray (`ray::ServeReplica:APP:DEPLOYMENT`, `ray::ProxyActor`), starts with `title`."""
    import psutil

    def titled(process) -> bool:
        try:
            return (process.cmdline() or [""])[0].startswith(title)
        except psutil.Error:  # a worker that exited meanwhile, or a zombie not yet reaped
            return False

    found = [p for p in psutil.Process().children(recursive=True) if titled(p)]
    assert len(found) == 1, f"{len(found)} processes titled {title}"
    return found[0]


class PeakRss:
    """Samples processes' resident memory every few ms while the block runs: growth = peak - the
    value before the block."""

    def __init__(self, processes: dict) -> None:
        self.processes = processes
        self.before = {name: p.memory_info().rss for name, p in processes.items()}
        self.peak = dict(self.before)
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            for name, process in self.processes.items():
                self.peak[name] = max(self.peak[name], process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *_) -> None:
        self._done.set()
        self._sampler.join()

    def growth(self, name: str) -> int:
        return self.peak[name] - self.before[name]


def body_of(total: int, chunk: int = MiB):
    """`total` bytes of a JSON-looking body, made as they are sent (never all in memory)."""
    yield b'{"prompt": "'
    block = b"x" * chunk
    for _ in range(total // chunk):
        yield block


@pytest.mark.parametrize(("declared", "keyed"), [(True, False), (False, True), (False, False)],
                         ids=["content-length", "chunked", "chunked-without-the-key"])
def test_a_100_mb_body_is_refused_before_it_is_read(sd, declared, keyed) -> None:
    """100 MB: a 413 in OpenAI's shape, at once, and the ingress does not hold the body (Serve's
    proxy and replica move only what arrives before the answer). A declared size is refused
    before the API key is checked; a body of no declared size (chunked) from a client without
    the key gets its 401 before a byte of it is read."""
    url = f"{sd}/v1/images/generations"
    assert httpx.post(url, json={"prompt": "x"}).status_code == 401  # warm: routes, connections
    processes = {"ingress": ray_process("ray::ServeReplica:sd:Ingress"),
                 "proxy": ray_process("ray::ProxyActor")}
    headers = {"Content-Type": "application/json", **(AUTH if keyed else {})}
    if declared:
        headers["Content-Length"] = str(100 * MiB + len(b'{"prompt": "'))
    with PeakRss(processes) as rss:
        started = time.monotonic()
        response = httpx.post(url, content=body_of(100 * MiB), headers=headers, timeout=60)
        took = time.monotonic() - started
    grown = {name: round(rss.growth(name) / MiB, 1) for name in processes}
    print(f"\n{'Content-Length' if declared else 'chunked'}: {response.status_code} in "
          f"{took:.2f} s; peak RSS growth MiB {grown}; before MiB "
          f"{ {n: round(b / MiB) for n, b in rss.before.items()} }")
    if declared or keyed:
        assert response.status_code == 413, response.text
        assert response.json()["error"] == {
            "message": "the request body is larger than this server's limit of 1048576 bytes",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}
    else:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
    assert took < 20
    # A body read whole would add 100 MiB or more. What is added is what Serve's proxy and
    # replica moved ahead of the app before the 413: at loopback speed 0-15 MiB with a
    # Content-Length, 0-50 MiB chunked (measured on 2 busy cores); see docs/serve.md.
    assert grown["ingress"] < 64, grown
    # the next request on a new connection is served as usual
    assert httpx.post(url, json={"prompt": "x"}, headers=AUTH, timeout=60).status_code == 200


# -- faults: bad rows, slow clients -------------------------------------------------------------


async def post_raw(url: str, bodies: list[bytes], headers: dict) -> list[httpx.Response]:
    """Bodies sent as they are (JSON with escapes such as \\ud800 that httpx would not write)."""
    async with httpx.AsyncClient(timeout=120) as http:
        return await asyncio.gather(*(http.post(
            url, content=b, headers={**headers, "Content-Type": "application/json"})
            for b in bodies))


def test_a_bad_request_among_many_fails_alone(sd, dit) -> None:
    """Bad requests sent at once with 35 legitimate ones: each bad one gets its own 400 in
    OpenAI's shape, every legitimate one its image. Past the ingress's checks (the model
    deployment called directly), rows the pipeline fails on (its tokenizer refuses a lone
    surrogate) are a 500 for those rows alone, never for their batch-mates."""
    from ray import serve

    url = f"{sd}/v1/images/generations"
    bad = {field: json.dumps({"prompt": "a lighthouse", field: "\ud800"}).encode()
           for field in ("prompt", "negative_prompt", "sampler", "lora")}
    good = [json.dumps({"prompt": "a lighthouse", "seed": i}).encode() for i in range(35)]
    bodies = good[:10] + list(bad.values()) + good[10:]
    responses = asyncio.run(post_raw(url, bodies, AUTH))
    answered = dict(zip(bodies, responses, strict=True))
    for field, body in bad.items():
        response = answered[body]
        assert response.status_code == 400, (field, response.text)
        assert_error_response(response.json())
        assert response.json()["error"]["param"] == field
    served = [answered[body] for body in good]
    assert [r.status_code for r in served] == [200] * 35, [r.text for r in served][:3]
    for response in served:
        assert_images_response(response.json())
    assert max(r.json()["data"][0]["batch_size"] for r in served) > 1  # they were batched

    model = serve.get_deployment_handle("ImageModel", app_name="sd")
    rows = [{"seed": i, "prompt": "a lighthouse", "adapters": []} for i in range(12)]
    rows[4] = {"seed": 4, "prompt": "\ud800", "adapters": []}
    rows[9] = {"seed": 9, "prompt": "a lighthouse", "negative_prompt": "\udfff", "adapters": []}
    answers = [call.result(timeout_s=120) for call in
               [model.generate.remote(row) for row in rows]]
    failed = [i for i, answer in enumerate(answers) if answer["error"]]
    assert failed == [4, 9], [a["error"] for a in answers]
    assert {answers[i]["status"] for i in failed} == {500}
    assert all(answers[i]["image"] for i in range(12) if i not in failed)
    assert max(a["batch_size"] for a in answers) > 1

    # a class-conditional model: "²" and "①" are digits to str.isdigit, but no class ids
    classes = [{"prompt": label, "seed": i} for i, label in enumerate(["seven", "3"] * 6)]
    classes[3:3] = [{"prompt": "²"}]
    classes[9:9] = [{"class_label": "①", "prompt": "x"}]
    responses = asyncio.run(post_many(f"{dit}/v1/images/generations", classes))
    codes = [r.status_code for r in responses]
    assert [i for i, code in enumerate(codes) if code != 200] == [3, 9], [r.text for r in responses]
    assert {codes[3], codes[9]} == {400}
    assert all("class name" in responses[i].json()["error"]["message"] for i in (3, 9))
    assert max(r.json()["data"][0]["batch_size"] for r in responses if r.status_code == 200) > 1


def read_answer(sock: socket.socket, seconds: float) -> bytes:
    """What a raw socket got within `seconds` (up to the end of its headers and a little)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        pass
    return got


def test_slow_bodies_never_lock_out_clients_with_the_key(sd) -> None:
    """300 raw sockets send headers and 11 bytes of a declared 1,000-byte body without the key,
    then idle: each gets its 401 at once, and a client with the key is served meanwhile. A
    client with the key whose body stalls gets a 408 after `limits.body_timeout_s` (2 s)."""
    address = httpx.URL(sd)
    where = (address.host, address.port)
    head = (f"POST {address.path}/v1/images/generations HTTP/1.1\r\nHost: {address.host}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n")
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection(where, timeout=30)
            sock.sendall(f"{head}\r\n".encode() + b'{"prompt": ')
            slow.append(sock)
        started = time.monotonic()
        response = httpx.post(f"{sd}/v1/images/generations", json={"prompt": "x"},
                              headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 20
        answers = [read_answer(sock, 10) for sock in slow]
        assert all(a.startswith(b"HTTP/1.1 401") for a in answers), {a[:12] for a in answers}
        keyed = socket.create_connection(where, timeout=30)
        slow.append(keyed)
        started = time.monotonic()
        keyed.sendall(f"{head}Authorization: Bearer {KEY}\r\n\r\n".encode() + b'{"prompt": ')
        answer = read_answer(keyed, 20)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 1.5 < took < 15, took
    finally:
        for sock in slow:
            sock.close()


# -- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_form_batches_and_images_do_not_depend_on_them(sd) -> None:
    url = f"{sd}/v1/images/generations"
    alone = httpx.post(url, json={"prompt": "a lighthouse", "seed": 5}, headers=AUTH, timeout=60)
    assert alone.headers[BATCH_HEADER] == "1"
    bodies = [{"prompt": "a lighthouse", "seed": seed} for seed in range(12)]
    responses = asyncio.run(post_many(url, bodies, AUTH))
    assert [r.status_code for r in responses] == [200] * 12
    sizes = [r.json()["data"][0]["batch_size"] for r in responses]
    assert max(sizes) > 1, sizes
    assert all(int(r.headers[BATCH_HEADER]) == s for r, s in zip(responses, sizes, strict=True))
    batched = decode(responses[5].json()["data"][0]["b64_json"]).astype(int)
    assert np.abs(batched - decode(alone.json()["data"][0]["b64_json"])).max() <= 1


def test_incompatible_requests_are_not_mixed(sd) -> None:
    url = f"{sd}/v1/images/generations"
    singles = {
        (steps, size): httpx.post(url, headers=AUTH, timeout=60, json={
            "prompt": "a fox", "seed": 3, "steps": steps, "size": size}).json()
        for steps, size in [(2, "64x64"), (3, "64x64"), (2, "32x32")]
    }
    # four of each kind at once: one formed batch may hold all, but a pipeline call holds one kind
    kinds = list(singles) * 4
    bodies = [{"prompt": "a fox", "seed": 3, "steps": s, "size": z} for s, z in kinds]
    responses = asyncio.run(post_many(url, bodies, AUTH))
    for (steps, size), response in zip(kinds, responses, strict=True):
        item = response.json()["data"][0]
        assert item["batch_size"] <= 4
        image = decode(item["b64_json"])
        assert image.shape[:2] == tuple(int(s) for s in size.split("x"))[::-1]
        alone = decode(singles[(steps, size)]["data"][0]["b64_json"])
        assert np.abs(image.astype(int) - alone).max() <= 1, (steps, size)


# -- protection --------------------------------------------------------------------------------


def test_safety_filter_withholds_flagged_images(dit) -> None:
    """A flagged image is withheld: a black PNG of its size in its place (OpenAI's schema has
    no null there, and the docs' decode line must work), with `flagged` and its score."""
    response = httpx.post(f"{dit}/v1/images/generations", json={"prompt": "three", "n": 2},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert_images_response(response.json())
    data = response.json()["data"]
    assert [d["flagged"] for d in data] == [True, True]
    for item in data:
        image = decode(item["b64_json"])
        assert image.shape == (64, 64, 3) and not image.any(), "the image itself was sent"
    assert all(0.0 <= d["safety_score"] <= 1.0 for d in data)
    wrong = httpx.post(f"{dit}/v1/images/generations", json={"prompt": "a fox"}, timeout=60)
    assert wrong.status_code == 400 and "class name" in wrong.json()["error"]["message"]


def test_overload_answers_503_with_retry_after_and_then_recovers(dit) -> None:
    url = f"{dit}/v1/images/generations"
    responses = asyncio.run(post_many(url, [{"prompt": "seven", "seed": i} for i in range(40)]))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected and codes.count(200) >= 1
    assert all(r.headers["retry-after"] == "2" for r in rejected)
    assert all(r.json()["error"]["code"] == "overloaded" for r in rejected)
    after = httpx.post(url, json={"prompt": "seven", "class_label": 7}, timeout=60)
    assert after.status_code == 200 and after.json()["data"][0]["flagged"] is True


# -- the fuzzer --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_never_get_a_5xx(sd, mode) -> None:
    """Schemathesis draws valid (positive) and invalid (negative) requests from the app's own
    OpenAPI schema, where the server's limits are schema constraints."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{sd}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/images/generations", "/v1/models"}
    seen: dict[int, int] = {}
    if mode == "negative":  # only a body can be made invalid here
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:

        @given(case=operation.as_strategy(GenerationMode(mode)))
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            response = case.call(headers=AUTH, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.body, response.text)

        no_server_error()
    assert (200 in seen) if mode == "positive" else (400 in seen), seen


# -- autoscaling -------------------------------------------------------------------------------


def replicas(app: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments["ImageModel"].replica_states
    return states.get("RUNNING", 0)


def wait_for(condition, seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not reached within {seconds} s")
        time.sleep(0.5)
    return time.monotonic() - started


def test_autoscaling_grows_under_load_and_shrinks_after(serve_url) -> None:
    from ray import serve

    url = deploy(serve_url, "scale", {
        "model": {"model": "tiny:dit"},
        "defaults": {"steps": 8},
        "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.01},
        "max_ongoing_requests": 4,
        "autoscaling": {
            "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
            "upscale_delay_s": 1, "downscale_delay_s": 2,
            "look_back_period_s": 2, "metrics_interval_s": 0.5,
        },
        "resources": SMALL,
        "runtime": {"device": "cpu"},
        "safety": {"on": False},
    }) + "/v1/images/generations"
    stop = threading.Event()
    codes: list[int] = []

    async def load() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            async def client(i: int) -> None:
                while not stop.is_set():
                    response = await http.post(url, json={"prompt": "one", "seed": i})
                    codes.append(response.status_code)
            await asyncio.gather(*(client(i) for i in range(6)))

    loader = threading.Thread(target=asyncio.run, args=(load(),))
    try:
        assert replicas("scale") == 1
        loader.start()
        wait_for(lambda: replicas("scale") == 2, seconds=90)
    finally:
        stop.set()
        loader.join(timeout=60)
    try:
        wait_for(lambda: replicas("scale") == 1, seconds=90)
        assert codes and set(codes) == {200}
    finally:
        serve.delete("scale")


# -- the bundled digits model ------------------------------------------------------------------


def test_digits_model_serves_a_digit(serve_url) -> None:
    """The bundled DiT, served, draws the digit asked for: the bundled classifier reads it."""
    import torch
    from ray import serve

    from darkroom.platform.config import read_yaml_file
    from darkroom.platform.zoo.classifier import load_digits_classifier
    from darkroom.platform.zoo.data import to_tensor

    spec, _ = read_yaml_file(Path(__file__).resolve().parents[2] / "configs/serve/digits.yaml",
                             "serve file")
    spec.update(resources=SMALL, runtime={"device": "cpu"}, safety={"on": False})
    url = deploy(serve_url, "digits", spec)
    try:
        response = httpx.post(f"{url}/v1/images/generations", timeout=60,
                              json={"prompt": "seven", "n": 4, "steps": 20, "seed": 3})
        assert response.status_code == 200, response.text
        images = np.stack([decode(d["b64_json"]) for d in response.json()["data"]])
    finally:
        serve.delete("digits")
    with torch.no_grad():
        read = load_digits_classifier()(to_tensor(images)).argmax(dim=1).tolist()
    assert read.count(7) >= 3, f"the classifier read {read} for four sevens"



# -- Ray's own CLI -----------------------------------------------------------------------------


def test_rays_serve_run_deploys_the_rayservice_import_path(serve_url, tmp_path) -> None:
    """The Serve config of deploy/rayservice.yaml, pointed at a tiny serve file, via `serve run`."""
    import subprocess
    import sys

    import ray
    import yaml
    from ray import serve

    root = Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((root / "deploy/rayservice.yaml").read_text())
    app = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    assert app["import_path"] == "darkroom.serve.app:build_app"
    assert (root / "configs/serve" / Path(app["args"]["config"]).name).is_file()
    serve_file = tmp_path / "tiny.yaml"
    serve_file.write_text(
        "model: {model: 'tiny:dit'}\ndefaults: {steps: 2}\nresources: {num_cpus: 0.5}\n"
        "runtime: {device: cpu}\nsafety: {on: false}\n"
    )
    config = tmp_path / "serve_config.yaml"
    app.update(name="cli", route_prefix="/cli", args={"config": str(serve_file)})
    config.write_text(yaml.safe_dump({"applications": [app]}))
    serve_cli = Path(sys.executable).with_name("serve")
    address = ray.get_runtime_context().gcs_address
    try:
        run = subprocess.run(
            [str(serve_cli), "run", str(config), "--address", address, "--non-blocking"],
            capture_output=True, text=True, timeout=180,
        )
        assert run.returncode == 0, run.stderr[-2000:]

        def running() -> bool:
            app_status = serve.status().applications.get("cli")
            assert app_status is None or app_status.status != "DEPLOY_FAILED", app_status
            return app_status is not None and app_status.status == "RUNNING"

        wait_for(running, seconds=120)
        response = httpx.post(f"{serve_url}/cli/v1/images/generations", timeout=60,
                              json={"prompt": "four", "class_label": 4})
        assert response.status_code == 200, response.text
        assert decode(response.json()["data"][0]["b64_json"]).shape == (64, 64, 3)
    finally:
        serve.delete("cli")


def test_darkroom_serve_command_on_a_running_cluster(serve_url, dit, tmp_path) -> None:
    """`darkroom serve FILE` with RAY_ADDRESS set: deploys, prints the URL where the cluster's
    proxy answers, and SIGTERM removes its own app only (the cluster's `dit` app stays); a name
    the cluster already uses is refused."""
    import signal
    import subprocess
    import sys

    import ray
    from ray import serve

    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(
        "name: cmd\nmodel: {model: 'tiny:dit'}\ndefaults: {steps: 2}\nresources: {num_cpus: 0.5}\n"
        "runtime: {device: cpu}\nsafety: {on: false}\nhttp: {route_prefix: /cmd}\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "darkroom", "serve", str(serve_file)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        lines = []
        while not any("serving at" in line for line in lines):
            assert time.monotonic() - started < 150 and process.poll() is None, lines
            lines.append(process.stdout.readline())
        assert f"serving at {serve_url}/cmd/v1" in "".join(lines)
        response = httpx.post(f"{serve_url}/cmd/v1/images/generations", timeout=60,
                              json={"prompt": "two"})
        assert response.status_code == 200, response.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        applications = serve.status().applications
        assert "cmd" not in applications and "dit" in applications
    finally:
        if process.poll() is None:
            process.kill()
    # a name the cluster already uses is refused: deploying it would replace that app
    serve_file.write_text(serve_file.read_text().replace("name: cmd", "name: dit"))
    taken = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2 and "Traceback" not in taken.stderr, taken.stderr[-2000:]
    assert "already runs a Serve application named 'dit'" in taken.stderr
    assert serve.status().applications["dit"].status == "RUNNING"


# -- LoRA adapters and the new families ----------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    from darkroom.platform.models.adapters import save_random_lora

    root = tmp_path_factory.mktemp("serve-loras")
    return {name: str(save_random_lora("tiny:sd", root / name, seed=seed))
            for seed, name in enumerate(("ink", "oil", "pastel"), start=1)}


@pytest.fixture(scope="module")
def lora_app(serve_url, adapters):
    from ray import serve

    spec = {
        "name": "lora",
        "model": {"name": "sd", "model": "tiny:sd",
                  "loras": [{"name": n, "path": p} for n, p in adapters.items()]},
        "defaults": {"sampler": "ddim", "steps": 2, "guidance_scale": 3.0},
        "limits": {"max_n": 4, "max_steps": 4, "max_side": 64, "max_prompt_chars": 200},
        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.3},
        "max_ongoing_requests": 16,
        "max_adapters_per_replica": 2,
        "resources": SMALL,
        "runtime": {"device": "cpu"},
        "safety": {"on": False},
    }
    url = deploy(serve_url, "lora", spec)
    yield url, spec
    serve.delete("lora")


def test_models_list_each_adapter_and_an_unknown_one_is_a_400(lora_app) -> None:
    url, _ = lora_app
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
    assert ids == ["sd", "sd:ink", "sd:oil", "sd:pastel"]
    response = httpx.post(f"{url}/v1/images/generations", timeout=60,
                          json={"prompt": "a fox", "lora": "inc"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "lora" and "did you mean `ink`?" in error["message"]


def test_requests_get_their_adapter_and_batches_never_mix_them(lora_app, adapters) -> None:

    from darkroom.platform.engine.generator import ImageGenerator

    url, spec = lora_app
    body = {"prompt": "a lighthouse", "size": "32x32", "seed": 11}
    direct = ImageGenerator(spec["model"], runtime={"device": "cpu"}, defaults=spec["defaults"])

    def expected(lora: str | None) -> np.ndarray:
        row = {"seed": 11, "prompt": "a lighthouse", "width": 32, "height": 32,
               "adapters": json.dumps([lora] if lora else [])}
        (out,) = direct.generate([row])
        return np.asarray(Image.open(io.BytesIO(out["image"])).convert("RGB")).astype(int)

    # alternating requests, as one client would send them: each gets its own adapter
    for lora in ["ink", "oil", "ink", None, "oil", "ink"]:
        extra = {"model": f"sd:{lora}"} if lora == "oil" else {"lora": lora} if lora else {}
        response = httpx.post(f"{url}/v1/images/generations", json={**body, **extra}, timeout=120)
        assert response.status_code == 200, response.text
        got = decode(response.json()["data"][0]["b64_json"]).astype(int)
        assert np.abs(got - expected(lora)).max() <= 1, lora
    # four requests for each of two adapters at once: no batch holds both adapters
    bodies = [{**body, "lora": lora, "seed": i} for i, lora in enumerate(["ink", "oil"] * 4)]
    results = asyncio.run(post_many(f"{url}/v1/images/generations", bodies))
    assert all(r.status_code == 200 for r in results)
    assert max(r.json()["data"][0]["batch_size"] for r in results) <= 4


def test_adapters_stay_loaded_for_their_queued_batches(lora_app, adapters) -> None:
    """60 requests at once for three adapters on a replica that keeps two: Serve drops the least
    recently used adapter while requests for it are still queued (before, 3 of 160 got a 500,
    "not in the list of present adapters"). Each gets its own adapter's image, and once they
    are done the replica holds at most two again."""
    from ray import serve

    from darkroom.platform.engine.generator import ImageGenerator

    url, spec = lora_app
    direct = ImageGenerator(spec["model"], runtime={"device": "cpu"}, defaults=spec["defaults"])
    expected = {}
    for lora in adapters:
        (out,) = direct.generate([{"seed": 11, "prompt": "a lighthouse", "width": 32,
                                   "height": 32, "adapters": json.dumps([lora])}])
        expected[lora] = np.asarray(Image.open(io.BytesIO(out["image"])).convert("RGB"))
    loras = list(adapters) * 20
    body = {"prompt": "a lighthouse", "size": "32x32", "seed": 11}
    results = asyncio.run(post_many(f"{url}/v1/images/generations",
                                    [{**body, "lora": lora} for lora in loras]))
    assert [r.status_code for r in results] == [200] * 60, {r.text for r in results
                                                             if r.status_code != 200}
    for lora, response in zip(loras, results, strict=True):
        got = decode(response.json()["data"][0]["b64_json"]).astype(int)
        assert np.abs(got - expected[lora]).max() <= 1, lora
    model = serve.get_deployment_handle("ImageModel", app_name="lora")
    state = model.loaded_adapters.remote().result()
    assert len(state["loaded"]) <= 2, state


def test_a_loaded_adapter_is_never_loaded_again_and_the_cap_holds(lora_app) -> None:
    from ray import serve

    url, _ = lora_app
    model = serve.get_deployment_handle("ImageModel", app_name="lora")
    before = model.loaded_adapters.remote().result()["loads"]
    for lora in ["ink", "ink", "oil", "oil", "ink"]:
        response = httpx.post(f"{url}/v1/images/generations", timeout=120,
                              json={"prompt": "a fox", "size": "32x32", "lora": lora})
        assert response.status_code == 200, response.text
    state = model.loaded_adapters.remote().result()
    assert state["loads"].get("ink", 0) - before.get("ink", 0) <= 1
    assert state["loads"].get("oil", 0) - before.get("oil", 0) <= 1
    response = httpx.post(f"{url}/v1/images/generations", timeout=120,
                          json={"prompt": "a fox", "size": "32x32", "lora": "pastel"})
    assert response.status_code == 200, response.text
    state = model.loaded_adapters.remote().result()
    assert len(state["loaded"]) <= 2 and "pastel" in state["loaded"]


def test_a_flow_model_is_served_with_its_own_samplers(serve_url) -> None:
    from ray import serve

    url = deploy(serve_url, "flux", {
        "model": {"model": "tiny:flux"},
        "defaults": {"sampler": "flow_euler", "steps": 2, "guidance_scale": 3.5},
        "resources": SMALL, "runtime": {"device": "cpu"}, "safety": {"on": False},
    })
    try:
        response = httpx.post(f"{url}/v1/images/generations", timeout=120,
                              json={"prompt": "a fox", "size": "32x32", "n": 2,
                                    "sampler": "flow_dpmpp_2m"})
        assert response.status_code == 200, response.text
        assert all(decode(d["b64_json"]).shape == (32, 32, 3)
                   for d in response.json()["data"])
        response = httpx.post(f"{url}/v1/images/generations", timeout=60,
                              json={"prompt": "a fox", "sampler": "ddim"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "sampler"
    finally:
        serve.delete("flux")


# -- image edits ---------------------------------------------------------------------------------


def test_the_openai_client_edits_an_image_and_bad_inputs_are_400s(serve_url) -> None:
    """A tiny inpainting model behind `/v1/images/edits`: the official client's
    `images.edit(image=..., mask=..., prompt=...)` gets a decodable image of the source's size;
    a 50,000 x 50,000 PNG header, a truncated image (only the replica's decode finds it) and a
    mask of the wrong size each get a 400 in OpenAI's shape, naming the field, while neither
    the ingress nor the model replica grows by more than a few MB; generations are refused."""
    from openai import OpenAI
    from ray import serve

    from tests.serve.test_edits import png_header_only

    url = deploy(serve_url, "inpaint", {
        "model": {"model": "tiny:sd-inpaint"}, "defaults": {"steps": 2},
        "limits": {"max_side": 64}, "resources": SMALL, "runtime": {"device": "cpu"},
        "safety": {"on": False},
    })
    try:
        rng = np.random.default_rng(0)
        source = encode(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 20:40] = 255
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        result = client.images.edit(image=("room.png", source, "image/png"),
                                    mask=("mask.png", encode(mask), "image/png"),
                                    prompt="a round window", n=2)
        assert [decode(item.b64_json).shape for item in result.data] == [(48, 64, 3)] * 2
        refused = httpx.post(f"{url}/v1/images/generations", json={"prompt": "x"}, timeout=60)
        assert refused.status_code == 400 and "/v1/images/edits" in refused.text

        processes = {"ingress": ray_process("ray::ServeReplica:inpaint:Ingress"),
                     "model": ray_process("ray::ServeReplica:inpaint:ImageModel")}
        bad = {
            "bomb": ({"image": png_header_only(50_000, 50_000), "mask": encode(mask)}, "image"),
            "truncated": ({"image": source[: len(source) // 2], "mask": encode(mask)}, "image"),
            "mask size": ({"image": source, "mask": encode(mask[:32])}, "mask"),
        }
        for name, (files, param) in bad.items():
            with PeakRss(processes) as rss:
                response = httpx.post(f"{url}/v1/images/edits", data={"prompt": "x"},
                                      files={k: (f"{k}.png", v) for k, v in files.items()},
                                      timeout=60)
            grown = {p: round(rss.growth(p) / MiB, 1) for p in processes}
            print(f"\n{name}: {response.status_code}, peak RSS growth MiB {grown}")
            assert response.status_code == 400, (name, response.text)
            assert_error_response(response.json())
            assert response.json()["error"]["param"] == param, (name, response.text)
            assert max(grown.values()) < 8, (name, grown)
        assert "not a readable image" in httpx.post(
            f"{url}/v1/images/edits", data={"prompt": "x"}, timeout=60,
            files={"image": ("a.png", source[:-200]), "mask": ("m.png", encode(mask))},
        ).json()["error"]["message"]
    finally:
        serve.delete("inpaint")


def encode(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
