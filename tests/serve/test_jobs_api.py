"""Jobs, idempotency, webhooks, streams, output formats, kept images and quotas in-process: the
FastAPI app with a job store in SQLite and a stand-in for the model deployment, driven through
ASGI (one event loop per test, so the dispatcher and the deliverer run as in a replica). Webhooks
go to a real HTTP receiver on a local port."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.platform.data.records import encode_png
from darkroom.serve.ingress import build_api
from darkroom.serve.jobs.book import JobSettings
from darkroom.serve.outputs import StoredImages, shaped
from darkroom.serve.quotas import Quota
from darkroom.serve.webhooks import WebhookSettings, verify
from tests.serve.openai_schema import assert_error_response, assert_images_response
from tests.serve.test_api import AUTH, KEY, settings

SECRET = "whsec_" + base64.b64encode(b"a webhook secret of this test").decode()
OTHER = {"Authorization": "Bearer other-key"}


def image_of(seed: int) -> bytes:
    return encode_png(np.full((8, 8, 3), seed % 251, np.uint8))


class JobModel:
    """The model deployment's stand-in: counts its calls, answers like a replica (the asked
    format, kept images), and holds its answers while `hold` is set."""

    def __init__(self, stored: StoredImages | None = None) -> None:
        self.calls = 0
        self.rows: list[Any] = []
        self.stored = stored
        self.hold: asyncio.Event | None = None

    async def __call__(self, rows, extras):
        self.calls += 1
        self.rows += rows
        if self.hold is not None:
            await self.hold.wait()
        return [shaped({"image": image_of(r.seed), "error": None, "seed": r.seed,
                        "width": 8, "height": 8, "batch_size": len(rows), "flagged": False,
                        "safety_score": 0.0, "steps": 2, "seconds": 0.01},
                       (extra or {}).get("output"), self.stored)
                for r, extra in zip(rows, extras, strict=True)]

    async def stream(self, row, extra):
        for index in range(extra["preview"]["count"]):
            yield {"partial": index, "image": image_of(100 + index)}
        (final,) = await self([row], [extra])
        yield {"final": final}


def jobs_app(tmp_path, model: JobModel, **changes):
    keys = {__import__("hashlib").sha256(k.encode()).hexdigest(): name
            for k, name in ((KEY, "alice"), ("other-key", "bob"))}
    values = dict(jobs=JobSettings(store=f"sqlite://{tmp_path / 'jobs.db'}", lease_s=5),
                  api_keys=keys, webhooks=WebhookSettings(secret=SECRET, backoff_s=0.05),
                  outputs_uri=str(tmp_path / "kept"), url_secret="url-secret", dispatch_images=8)
    return build_api(settings(**{**values, **changes}), model, stream=model.stream)


def run(app, scenario):
    """`scenario(http)` in one event loop, with an ASGI client of `app`."""
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     timeout=30) as http:
            return await scenario(http)

    return asyncio.run(go())


def decoded(item: dict) -> bytes:
    return base64.b64decode(item["b64_json"])


def test_an_async_request_is_a_job_polled_to_its_result(tmp_path):
    model = JobModel()
    app = jobs_app(tmp_path, model)

    async def scenario(http):
        accepted = await http.post("/v1/images/generations", headers={
            **AUTH, "Prefer": "respond-async"}, json={"prompt": "a fox", "n": 2, "seed": 40})
        job = accepted.json()
        done = await http.get(f"/v1/images/jobs/{job['id']}?wait=10", headers=AUTH)
        stranger = await http.get(f"/v1/images/jobs/{job['id']}", headers=OTHER)
        missing = await http.get("/v1/images/jobs/job_nothing", headers=AUTH)
        return accepted, done.json(), stranger, missing

    accepted, done, stranger, missing = run(app, scenario)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["location"].endswith(f"/v1/images/jobs/{accepted.json()['id']}")
    assert accepted.headers["preference-applied"] == "respond-async"
    assert accepted.json()["status"] in ("queued", "in_progress")
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert_images_response(done["result"])
    assert [decoded(d) for d in done["result"]["data"]] == [image_of(40), image_of(41)]
    assert {r.job_id for r in model.rows} == {done["id"]}
    for response in (stranger, missing):  # another key's job is not there for it
        assert response.status_code == 404
        assert_error_response(response.json())


def test_the_same_idempotency_key_sent_20_times_at_once_generates_once(tmp_path):
    """20 concurrent requests with one key and body: one pipeline call, 20 equal answers; the
    key with another body is a 422 in OpenAI's shape; another API key's same key is its own."""
    model = JobModel()
    app = jobs_app(tmp_path, model)
    keyed = {**AUTH, "Idempotency-Key": "order-7"}

    async def scenario(http):
        body = {"prompt": "a fox", "seed": 3}
        same = await asyncio.gather(*(http.post("/v1/images/generations", headers=keyed,
                                                json=body) for _ in range(20)))
        calls = model.calls
        changed = await http.post("/v1/images/generations", headers=keyed,
                                  json={**body, "seed": 4})
        later = await http.post("/v1/images/generations", headers={
            **keyed, "Prefer": "respond-async"}, json=body)
        theirs = await http.post("/v1/images/generations", headers={
            **OTHER, "Idempotency-Key": "order-7"}, json=body)
        return same, calls, changed, later, theirs

    same, calls, changed, later, theirs = run(app, scenario)
    assert [r.status_code for r in same] == [200] * 20, same[0].text
    assert calls == 1
    assert {decoded(r.json()["data"][0]) for r in same} == {image_of(3)}
    assert changed.status_code == 422
    assert_error_response(changed.json())
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert later.status_code == 202 and later.json()["status"] == "succeeded"  # the same job
    assert theirs.status_code == 200 and model.calls == 2


class Receiver:
    """A webhook receiver on a local port: answers 500 to its first `failures` requests."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.seen: list[tuple[int, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.seen) < receiver.failures else 200
                receiver.seen.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        return [json.loads(body) for status, _, body in self.seen if status == 200]


def test_webhooks_are_signed_sent_once_each_and_retried(tmp_path):
    """A receiver that fails its first two requests: every request it gets carries a valid
    signature, the failed ones are retried with the same webhook-id, and each event arrives
    once; the payload is the job."""
    receiver = Receiver(failures=2)
    hooks = WebhookSettings(secret=SECRET, backoff_s=0.05, allow_private=True)
    app = jobs_app(tmp_path, JobModel(), webhooks=hooks)

    async def scenario(http):
        accepted = await http.post("/v1/images/generations", headers={
            **AUTH, "Prefer": "respond-async"}, json={
                "prompt": "a fox", "webhook": receiver.url,
                "webhook_events_filter": ["start", "completed"]})
        deadline = time.monotonic() + 20
        while len(receiver.delivered()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more arrives
        return accepted.json()

    job = run(app, scenario)
    receiver.server.shutdown()
    assert all(verify(SECRET, headers, body) for _, headers, body in receiver.seen)
    assert not verify(SECRET, receiver.seen[0][1], receiver.seen[0][2] + b" ")
    events = [d["type"] for d in receiver.delivered()]
    assert sorted(events) == ["image.job.completed", "image.job.start"], events
    assert len(receiver.seen) == 4  # two failures, each retried once more
    ids = [headers["webhook-id"] for _, headers, _ in receiver.seen]
    assert len(set(ids)) == 2  # one id per event, kept across its retries
    completed = next(d for d in receiver.delivered() if d["type"] == "image.job.completed")
    assert completed["data"]["id"] == job["id"] and completed["data"]["status"] == "succeeded"


@pytest.mark.parametrize(("target", "allowed"), [
    ("http://127.0.0.1:9/hook", False), ("http://10.0.0.1/hook", False),
    ("http://[::1]:9/hook", False), ("http://169.254.169.254/latest", False),
    ("http://127.0.0.1:9/hook", True)])
def test_webhooks_to_loopback_and_private_addresses_are_refused_unless_allowed(
        tmp_path, target, allowed):
    hooks = WebhookSettings(secret=SECRET, allow_private=allowed)
    app = jobs_app(tmp_path, JobModel(), webhooks=hooks)

    async def scenario(http):
        return await http.post("/v1/images/generations", headers={
            **AUTH, "Prefer": "respond-async"}, json={"prompt": "x", "webhook": target})

    response = run(app, scenario)
    if allowed:
        assert response.status_code == 202, response.text
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "webhook"
    assert "private or reserved address" in response.json()["error"]["message"]


def test_webhooks_outside_the_allow_list_and_without_a_secret_are_refused(tmp_path):
    listed = jobs_app(tmp_path, JobModel(), webhooks=WebhookSettings(
        secret=SECRET, allow_hosts=("hooks.example.com",)))
    unsigned = jobs_app(tmp_path, JobModel(), webhooks=WebhookSettings())

    async def post(http):
        return await http.post("/v1/images/generations", headers={
            **AUTH, "Prefer": "respond-async"}, json={
                "prompt": "x", "webhook": "https://elsewhere.example.org/hook"})

    assert "not in this server's `webhooks.allow_hosts`" in run(listed, post).text
    assert "sends no webhooks" in run(unsigned, post).text


def test_queued_jobs_show_their_position_and_are_cancelled_at_once(tmp_path):
    model = JobModel()
    app = jobs_app(tmp_path, model, dispatch_images=1)

    async def scenario(http):
        model.hold = asyncio.Event()
        async_ = {**AUTH, "Prefer": "respond-async"}
        ids = [(await http.post("/v1/images/generations", headers=async_,
                                json={"prompt": "x", "seed": i})).json()["id"]
               for i in range(3)]
        await asyncio.sleep(0.5)
        before = [(await http.get(f"/v1/images/jobs/{i}", headers=AUTH)).json() for i in ids]
        cancelled = (await http.delete(f"/v1/images/jobs/{ids[1]}", headers=AUTH)).json()
        model.hold.set()
        after = [(await http.get(f"/v1/images/jobs/{i}?wait=10", headers=AUTH)).json()
                 for i in ids]
        return before, cancelled, after

    before, cancelled, after = run(app, scenario)
    assert [b["status"] for b in before] == ["in_progress", "queued", "queued"]
    assert [b.get("position") for b in before[1:]] == [0, 1]
    assert cancelled["status"] == "cancelled"
    assert [a["status"] for a in after] == ["succeeded", "cancelled", "succeeded"]
    assert sorted(r.seed for r in model.rows) == [0, 2]  # the cancelled one never ran


def test_output_formats_and_urls_that_expire(tmp_path):
    """webp and jpeg decode as such; `response_format: url` gives a signed link that needs no
    key and stops working when tampered with or expired."""
    kept = tmp_path / "kept"
    app = jobs_app(tmp_path, JobModel(StoredImages(str(kept))), url_ttl_s=1.0)

    async def scenario(http):
        out = {}
        for fmt in ("webp", "jpeg"):
            response = await http.post("/v1/images/generations", headers=AUTH, json={
                "prompt": "x", "output_format": fmt, "output_compression": 10})
            out[fmt] = response.json()
        linked = (await http.post("/v1/images/generations", headers=AUTH, json={
            "prompt": "x", "response_format": "url", "output_format": "webp"})).json()
        url = linked["data"][0]["url"]
        fetched = await http.get(url)
        tampered = await http.get(url.replace("signature=", "signature=0"))
        await asyncio.sleep(1.2)
        expired = await http.get(url)
        return out, linked, fetched, tampered, expired

    out, linked, fetched, tampered, expired = run(app, scenario)
    for fmt, body in out.items():
        assert_images_response(body)
        assert body["output_format"] == fmt
        assert Image.open(io.BytesIO(decoded(body["data"][0]))).format == fmt.upper()
    assert_images_response(linked)
    assert "b64_json" not in linked["data"][0]
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).format == "WEBP"
    for response in (tampered, expired):
        assert response.status_code == 403
        assert_error_response(response.json())


def test_quotas_answer_429_with_retry_after(tmp_path):
    """A key's bucket of 1 image/s (burst 2) and a cap of 2 images in flight for the other key:
    over either, a 429 in OpenAI's shape with Retry-After; usage is counted per key."""
    model = JobModel()
    app = jobs_app(tmp_path, model, quota=Quota(images_per_s=1, burst=2),
                   key_quotas={"bob": Quota(max_in_flight=2)})

    async def scenario(http):
        first = await http.post("/v1/images/generations", headers=AUTH,
                                json={"prompt": "x", "n": 2})
        over = await http.post("/v1/images/generations", headers=AUTH, json={"prompt": "x"})
        model.hold = asyncio.Event()
        busy = asyncio.ensure_future(http.post("/v1/images/generations", headers=OTHER,
                                               json={"prompt": "x", "n": 2}))
        await asyncio.sleep(0.3)
        capped = await http.post("/v1/images/generations", headers=OTHER, json={"prompt": "x"})
        model.hold.set()
        return first, over, capped, await busy

    first, over, capped, busy = run(app, scenario)
    assert first.status_code == 200 and busy.status_code == 200
    for response in (over, capped):
        assert response.status_code == 429, response.text
        assert_error_response(response.json())
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert int(response.headers["retry-after"]) >= 1


def test_usage_is_counted_per_key(tmp_path):
    from darkroom.serve.front import Front

    front = Front(settings(), JobModel())
    front._count("alice", [{"steps": 4, "seconds": 0.5}, {"steps": 4, "seconds": 0.25},
                           {"error": "bad"}])
    assert front.usage.totals["alice"] == {"images": 2, "steps": 8, "seconds": 0.75}


def test_the_official_client_parses_the_stream(tmp_path):
    """`images.generate(..., stream=True, partial_images=2)`: two partial images, then the
    completed one, as the official client's types."""
    from openai import AsyncOpenAI

    model = JobModel()
    app = jobs_app(tmp_path, model)

    async def scenario(http):
        client = AsyncOpenAI(base_url="http://api/v1", api_key=KEY, http_client=http,
                             max_retries=0)
        stream = await client.images.generate(prompt="a fox", stream=True, partial_images=2,
                                              extra_body={"seed": 9})
        return [event async for event in stream]

    events = run(app, scenario)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert base64.b64decode(events[-1].b64_json) == image_of(9)
