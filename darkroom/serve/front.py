"""How the ingress serves a generating request, and the routes of jobs and kept images.

A request is served one of three ways:

- at once (the plain synchronous request): its rows go to the model deployment and the
  answer is the images response;
- as a stream (`stream: true`): server-sent events in OpenAI's shape, previews then images;
- through a job, when it asks for one (`Prefer: respond-async`: a 202 with the job at once), or
  when it must outlive its connection: an `Idempotency-Key` (a repeat gets the first request's
  job or result and never generates again) or a `webhook`. A synchronous request through a job
  waits for it (up to `jobs.max_wait_s`, then a 202).

Quotas are taken before any of them; usage is counted as images are made.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.guards import openai_error
from darkroom.serve.jobs.book import (
    EVENTS,
    IdempotencyConflict,
    Job,
    JobBook,
    JobSettings,
    Webhook,
    body_digest,
    new_id,
)
from darkroom.serve.jobs.dispatch import Busy, Died, Dispatcher
from darkroom.serve.jobs.store import open_store
from darkroom.serve.outputs import MEDIA_TYPES, StoredImages, UrlSigner, blank
from darkroom.serve.protocol import OPENAI_SIZES, ApiError, BadRequest, BaseRequest
from darkroom.serve.quotas import Quotas, Usage
from darkroom.serve.webhooks import Deliverer, TargetRefused, WebhookSettings, check_target

logger = logging.getLogger("ray.serve")
JOBS = "/v1/images/jobs"
ASYNC = "respond-async"
KEY_HEADER = "idempotency-key"
Generate = Callable[[list[RequestRow], list[dict | None]], Awaitable[list[dict[str, Any]]]]
Stream = Callable[[RequestRow, dict[str, Any]], AsyncIterator[dict[str, Any]]]


class Front:
    """One ingress replica's job book, dispatcher, webhook deliverer, quotas and usage."""

    def __init__(self, settings: Any, generate: Generate, run_rows: Any = None,
                 stream: Stream | None = None,
                 classify: Callable[[BaseException], type[Exception] | None] | None = None
                 ) -> None:
        self.settings = settings
        self.generate = generate
        self.stream = stream
        self.quotas = Quotas(settings.quota, settings.key_quotas)
        self.usage = Usage(settings.model_id)
        jobs: JobSettings | None = settings.jobs
        self.book = JobBook(open_store(jobs.store, jobs.namespace), jobs) if jobs else None
        self.hooks: WebhookSettings = settings.webhooks
        self.signer = (UrlSigner(settings.url_secret, settings.url_ttl_s)
                       if settings.outputs_uri and settings.url_secret else None)
        self.stored = StoredImages(settings.outputs_uri) if settings.outputs_uri else None
        self.dispatcher = self.deliverer = None
        if self.book is not None:
            self.dispatcher = Dispatcher(
                self.book, run_rows or _rows_runner(generate), worker=new_id("ingress"),
                capacity=settings.dispatch_images, classify=classify or _classify,
                retry_after_s=settings.retry_after_s,
                skip=lambda job: self.quotas.full(job.owner, job.n), finished=self._finished)
            if self.hooks.secret:
                self.deliverer = Deliverer(self.book.store, self.hooks, self._payload)
        self._base_url = ""  # where this app is reached, for webhook payloads' URLs

    def start(self) -> None:
        """The background loops, once there is a running event loop (the first request)."""
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.deliverer is not None:
            self.deliverer.start()

    # -- a generating request ------------------------------------------------------------------

    async def serve(self, request: Request, body: BaseRequest, rows: list[RequestRow],
                    route: str, files: dict[str, bytes] | None = None) -> Response:
        """Serve `rows`, the request's images, as the module says."""
        self.start()
        self._base_url = str(request.base_url)
        owner = getattr(request.state, "api_key", "anonymous")
        prefer = request.headers.get("prefer", "")
        wants_async = ASYNC in [p.strip().split("=")[0] for p in prefer.split(",")]
        key = request.headers.get(KEY_HEADER)
        through_job = wants_async or key is not None or body.webhook is not None
        if body.stream and through_job:
            raise BadRequest("`stream` cannot be combined with Prefer: respond-async, an "
                             "Idempotency-Key or a webhook: a stream is answered at once",
                             "stream")
        if through_job:
            self.quotas.admit(owner, len(rows), held=False)
            job = await self._submit(owner, body, rows, route, key, files)
            if wants_async:
                return self._accepted(job, request)
            job = await self.dispatcher.wait(job.id, self.settings.max_wait_s)
            return await self._answer_of(job, request)
        self.quotas.admit(owner, len(rows))
        if body.stream:
            return self._streamed(owner, body, rows, route)
        with self.quotas.held(owner, len(rows)):
            output = output_extra(body)
            extra = {"output": output} if output else None
            results = await self.generate(rows, [extra] * len(rows))
        self._count(owner, results)
        data, headers = answer(results, self.settings.model_id, self.signer,
                               str(request.base_url))
        return JSONResponse(data, headers=headers)

    def _count(self, owner: str, results: list[dict[str, Any]]) -> None:
        made = [r for r in results if not r.get("error") and not r.get("cancelled")]
        self.usage.add(owner, len(made), sum(r.get("steps") or 0 for r in made),
                       sum(r.get("seconds") or 0.0 for r in made))

    # -- jobs ----------------------------------------------------------------------------------

    async def _submit(self, owner: str, body: BaseRequest, rows: list[RequestRow], route: str,
                      key: str | None, files: dict[str, bytes] | None) -> Job:
        if self.book is None:
            raise BadRequest("this server keeps no jobs")
        if key is not None and not (0 < len(key) <= 255 and key.isprintable() and key.isascii()):
            raise BadRequest("`Idempotency-Key` must be 1-255 printable ASCII characters",
                             "Idempotency-Key")
        hook = await self._webhook(body)
        fields = body.model_dump(mode="json", exclude={"image", "images", "mask"})
        now = time.time()
        job_id = new_id()
        job = Job(id=job_id, owner=owner, route=route, created_at=now, queued_at=now,
                  n=len(rows), max_attempts=self.book.settings.max_attempts,
                  request={k: fields.get(k) for k in ("model", "n", "size", "response_format",
                                                      "output_format", "output_compression")},
                  body_sha256=body_digest({"route": route, **fields}, files),
                  results=[None] * len(rows), webhook=hook)
        rows = [row.model_copy(update={"job_id": job_id, "row_id": f"{job_id}/{i}"})
                for i, row in enumerate(rows)]
        try:
            job, created = await asyncio.to_thread(self.book.submit, job, rows, key)
        except IdempotencyConflict:
            raise ApiError(422, "this Idempotency-Key was used with another request body; use "
                           "a new key for a new request", param="Idempotency-Key",
                           code="idempotency_key_reused") from None
        if job.owner != owner:  # keys are per API key; this cannot match another's
            raise ApiError(422, "this Idempotency-Key belongs to another API key",
                           param="Idempotency-Key", code="idempotency_key_reused")
        if created:
            self.dispatcher.wake()
        return job

    async def _webhook(self, body: BaseRequest) -> Webhook | None:
        if body.webhook is None:
            return None
        if not self.hooks.secret:
            raise BadRequest("this server sends no webhooks (its serve file sets no "
                             "`webhooks.secret_env`)", "webhook")
        try:
            await asyncio.to_thread(check_target, body.webhook, self.hooks)
        except TargetRefused as err:
            raise BadRequest(str(err), "webhook") from None
        return Webhook(url=body.webhook, events=tuple(body.webhook_events_filter or EVENTS))

    def _accepted(self, job: Job, request: Request) -> JSONResponse:
        location = f"{str(request.base_url).rstrip('/')}{JOBS}/{job.id}"
        return JSONResponse(self._view_now(job), status_code=202, headers={
            "Location": location, "Preference-Applied": ASYNC})

    async def _answer_of(self, job: Job | None, request: Request) -> Response:
        """A synchronous request's answer from its job."""
        if job is None:
            raise ApiError(500, "the job of this request is gone", "server_error")
        if not job.terminal:  # still running after jobs.max_wait_s: poll it
            return self._accepted(job, request)
        if job.status == "failed":
            error = job.error or {}
            status = 400 if error.get("type") == "invalid_request_error" else 500
            return openai_error(status, error.get("message", "failed"), error.get("type", ""),
                                error.get("param"), error.get("code"))
        if job.status == "cancelled":
            return openai_error(409, "the job of this request was cancelled",
                                "invalid_request_error", code="cancelled")
        return JSONResponse(await asyncio.to_thread(self.result, job, str(request.base_url)))

    def _finished(self, job: Job) -> None:
        """A job this replica ran is done: count what it made."""
        self._count(job.owner, [r or {"error": "-"} for r in job.results])

    def view(self, job: Job, base_url: str, position: int = 0,
             progress: dict | None = None) -> dict[str, Any]:
        """The job as `GET` shows it."""
        out: dict[str, Any] = {
            "id": job.id, "object": "image.job", "status": job.status, "route": job.route,
            "created_at": int(job.created_at), "attempts": job.attempt,
            "model": self.settings.model_id, "n": job.n,
        }
        if job.status == "queued":
            out["position"] = position
        if job.status == "in_progress":
            out["progress"] = {"images": job.n, "images_done": sum(
                r is not None for r in job.results), **(progress or {})}
        if job.cancel_requested_at is not None:
            out["cancel_requested"] = True
        if job.stop:
            out["stopped"] = job.stop
        if job.started_at:
            out["started_at"] = int(job.started_at)
        if job.completed_at:
            out["completed_at"] = int(job.completed_at)
            out["expires_at"] = int(job.completed_at + self.book.settings.result_ttl_s)
        if job.status == "succeeded":
            out["result"] = self.result(job, base_url)
        if job.status == "failed":
            out["error"] = job.error
        return out

    def _view_now(self, job: Job) -> dict[str, Any]:
        return self.view(job, self._base_url, position=0)

    async def current_view(self, job: Job, base_url: str) -> dict[str, Any]:
        position = await asyncio.to_thread(self.book.position, job)
        progress = (await asyncio.to_thread(self.book.progress, job.id)
                    if job.status == "in_progress" else None)
        return await asyncio.to_thread(self.view, job, base_url, position, progress)

    def result(self, job: Job, base_url: str) -> dict[str, Any]:
        """A succeeded job's images response (blocking: reads its images)."""
        results = []
        for index, meta in enumerate(job.results):
            fmt = meta.get("format", "png")
            image = None if meta.get("stored") else self.book.image(job.id, index)
            if image is None and not meta.get("stored"):
                image = blank(meta["width"], meta["height"], fmt)  # withheld
            results.append({**meta, "image": image})
        return answer(results, self.settings.model_id, self.signer, base_url)[0]

    async def _payload(self, job_id: str, event: str) -> dict[str, Any] | None:
        """A webhook's body: the job as it is when the event is sent."""
        job = await asyncio.to_thread(self.book.get, job_id)
        if job is None:
            return None
        data = await self.current_view(job, self._base_url)
        return {"type": f"image.job.{event}", "timestamp": int(time.time()), "data": data}

    # -- streams -------------------------------------------------------------------------------

    def _streamed(self, owner: str, body: BaseRequest, rows: list[RequestRow],
                  route: str) -> StreamingResponse:
        kind = "image_edit" if route == "edits" else "image_generation"
        extra = {"output": output_extra(body) or {"format": "png"},
                 "preview": {"count": body.partial_images or 0,
                             "format": body.output_format}}

        async def events() -> AsyncIterator[bytes]:
            queue: asyncio.Queue = asyncio.Queue()

            async def one(row: RequestRow) -> None:
                try:
                    async for event in self.stream(row, extra):
                        await queue.put(event)
                except Exception as err:
                    await queue.put(err)
                finally:
                    await queue.put(None)

            with self.quotas.held(owner, len(rows)):
                tasks = [asyncio.ensure_future(one(row)) for row in rows]
                try:
                    left, made = len(rows), []
                    while left:
                        event = await queue.get()
                        if event is None:
                            left -= 1
                            continue
                        chunk, final = _event(kind, event, body)
                        if final is not None:
                            made.append(final)
                        yield chunk
                    self._count(owner, made)
                finally:
                    for task in tasks:
                        task.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # -- routes --------------------------------------------------------------------------------

    def add_routes(self, app: FastAPI, auth: list, responses: dict) -> None:
        """`GET`/`DELETE /v1/images/jobs/{id}` and `GET /v1/images/{id}/content`."""

        async def owned(job_id: str, request: Request) -> Job:
            job = (await asyncio.to_thread(self.book.get, job_id)) if self.book else None
            if job is None or job.owner != getattr(request.state, "api_key", "anonymous"):
                ttl = self.book.settings.result_ttl_s if self.book else 0
                raise ApiError(404, f"no job {job_id[:80]!r} here (finished jobs are kept for "
                               f"{ttl:g} s)", code="not_found")
            return job

        @app.get(JOBS + "/{job_id}", dependencies=auth, responses=responses,
                 summary="a job's state; `wait` seconds for it to finish first")
        async def get_job(job_id: str, request: Request, wait: float = Query(
                0, ge=0, le=max(self.settings.max_wait_s, 0))) -> JSONResponse:
            self.start()
            job = await owned(job_id, request)
            if wait and not job.terminal:
                job = await self.dispatcher.wait(job.id, wait) or job
            return JSONResponse(await self.current_view(job, str(request.base_url)))

        @app.delete(JOBS + "/{job_id}", dependencies=auth, responses=responses,
                    summary="cancel a job (between denoising steps when it is running)")
        async def cancel_job(job_id: str, request: Request) -> JSONResponse:
            job = await owned(job_id, request)
            job = await asyncio.to_thread(self.book.cancel, job.id) or job
            return JSONResponse(await self.current_view(job, str(request.base_url)))

        @app.get("/v1/images/{image_id}/content", responses=responses,
                 summary="a kept image (response_format: url), by its signed URL")
        async def content(image_id: str, expires: int = 0, signature: str = "") -> Response:
            if self.signer is None or not self.signer.valid(image_id, expires, signature):
                raise ApiError(403, "this image URL is not valid (expired or not signed here)",
                               code="url_invalid")
            data = await asyncio.to_thread(self.stored.read, image_id)
            if data is None:
                raise ApiError(404, "this image is no longer kept", code="not_found")
            media = MEDIA_TYPES[image_id.rsplit(".", 1)[1]]
            return Response(data, media_type=media, headers={"Cache-Control": "private"})


def output_extra(body: BaseRequest) -> dict[str, Any] | None:
    """What the replica must do with a request's images beyond PNG bytes; None: nothing."""
    if body.output_format == "png" and body.response_format != "url":
        return None
    return {"format": body.output_format, "compression": body.output_compression,
            "url": body.response_format == "url"}


def answer(results: list[dict[str, Any]], model_id: str, signer: UrlSigner | None,
           base_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The images response (and its headers) for the replicas' answers; the first failed image
    fails the request (a 500 when the server failed on it, else a 400 naming its field)."""
    from darkroom.serve.protocol import ImageFailed

    failed = next((r for r in results if r.get("error")), None)
    if failed and failed.get("status", 400) >= 500:
        raise ImageFailed(failed["error"])
    if failed:
        raise BadRequest(failed["error"], failed.get("param"))
    width, height = results[0]["width"], results[0]["height"]
    size = f"{width}x{height}"
    data = []
    for r in results:
        item = {"seed": r["seed"], "flagged": r["flagged"], "safety_score": r["safety_score"],
                "batch_size": r["batch_size"]}
        if r.get("stored"):
            item["url"] = signer.url(base_url, r["stored"])
        else:  # a flagged image's own bytes never left the replica: a blank in its place
            image = r["image"] if r["image"] is not None else blank(
                r["width"], r["height"], r.get("format", "png"))
            item["b64_json"] = base64.b64encode(image).decode()
        data.append(item)
    body = {"created": int(time.time()), "data": data, "model": model_id,
            "output_format": results[0].get("format", "png"), "width": width, "height": height}
    if size in OPENAI_SIZES:
        body["size"] = size
    headers = {"X-Darkroom-Batch-Size": str(max(r["batch_size"] for r in results))}
    return body, headers


def _event(kind: str, event: Any, body: BaseRequest) -> tuple[bytes, dict | None]:
    """One server-sent event in OpenAI's shape, and the final answer when it carries one."""
    common = {"created_at": int(time.time()), "background": "auto", "quality": "auto",
              "output_format": body.output_format}
    if isinstance(event, BaseException):
        error = {"message": f"the server failed on an image ({type(event).__name__})",
                 "type": "server_error", "param": None, "code": "image_failed"}
        return _sse("error", {"type": "error", "error": error}), None
    if "partial" in event:
        data = {"type": f"{kind}.partial_image", **common, "partial_image_index": event["partial"],
                "b64_json": base64.b64encode(event["image"]).decode(), "size": "auto"}
        return _sse(data["type"], data), None
    final = event["final"]
    if final.get("error"):
        kind_of = "server_error" if final.get("status", 400) >= 500 else "invalid_request_error"
        error = {"message": final["error"], "type": kind_of, "param": final.get("param"),
                 "code": None}
        return _sse("error", {"type": "error", "error": error}), None
    image = final["image"] if final["image"] is not None else blank(
        final["width"], final["height"], body.output_format)
    data = {"type": f"{kind}.completed", **common, "b64_json": base64.b64encode(image).decode(),
            "size": f"{final['width']}x{final['height']}", "seed": final["seed"],
            "flagged": final["flagged"], "safety_score": final["safety_score"],
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                      "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}}
    return _sse(data["type"], data), final


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _rows_runner(generate: Generate) -> Any:
    """Runs a job's rows through `generate`; an exception stands for every row."""
    async def run(rows: list[RequestRow], extras: list[dict]) -> list[Any]:
        try:
            return await generate(rows, extras)
        except Exception as err:
            return [err] * len(rows)

    return run


def _classify(err: BaseException) -> type[Exception] | None:
    from darkroom.serve.protocol import Overloaded

    return Busy if isinstance(err, Overloaded) else Died if isinstance(err, Died) else None


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
