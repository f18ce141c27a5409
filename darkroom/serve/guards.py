"""What stands in front of the ingress's routes: the request-size limit and the drain on stop.

Both are plain ASGI middlewares on the FastAPI app, so they act before a route reads the body,
and every refusal is an OpenAI-shaped error. The stop signal is a small Ray actor that
`darkroom serve` creates and every ingress replica waits on.
"""

# No `from __future__ import annotations`: Ray reads the actor's method signatures.

import asyncio
import logging
from typing import Any

import ray
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("ray.serve")
# After the drain, how long the gate keeps answering 503 before it reports drained: requests
# sent before the drain may still be on their way through Serve's proxy and the replica's queue
SETTLE_S = 1.0


def openai_error(
    status: int, message: str, kind: str, param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- the request-size limit --------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once the body read so far passes the limit; the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


class BodyLimit:
    """Refuses a request body over `max_bytes` (413) without reading the rest of it.

    A Content-Length over the limit is refused before the body is touched; a body without one
    (chunked) is counted as the app reads it, and reading stops at the first chunk past the
    limit. Answering is what stops the body: Serve forwards it only while the request lasts.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await openai_error(413, too_large(self.max_bytes), "invalid_request_error",
                               code="request_too_large")(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


# -- the drain ---------------------------------------------------------------------------------


class _Flight:
    """One HTTP request in flight: whether its answer has started, or the drain gave one."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.started = False
        self.cut = False
        self.task: asyncio.Future | None = None  # the app working on it


class Gate:
    """Admission of HTTP requests in one ingress replica: counts those in flight; once draining,
    refuses new ones (503 + Retry-After) and waits for those in flight, up to a deadline."""

    def __init__(self, retry_after: str) -> None:
        self.retry_after = retry_after
        self.draining = False
        self.flights: set[_Flight] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware of this gate, around `app`."""

        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if self.draining:
                await self._refuse(scope, receive, send)
                return
            flight = _Flight(scope, receive, send)

            async def tracked(message: Message) -> None:
                if flight.cut:  # the drain has answered for it: the late answer is dropped
                    return
                flight.started = True
                await send(message)

            self.flights.add(flight)
            self._idle.clear()
            flight.task = asyncio.ensure_future(app(scope, receive, tracked))
            try:
                await flight.task
            except asyncio.CancelledError:
                if not flight.cut:  # cancelled from outside (the client went away)
                    raise
            finally:
                self.flights.discard(flight)
                if not self.flights:
                    self._idle.set()

        return admit

    async def drain(self, seconds: float) -> int:
        """Refuse new requests, wait up to `seconds` for those in flight, then answer 503 for
        any still waiting, so that none is cut off later when the replica stops; then keep
        refusing for `SETTLE_S`. Returns how many were still in flight at the deadline."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            pass
        left = list(self.flights)
        for flight in left:
            if not flight.started:
                flight.cut = True  # before the first await: its own answer can no longer start
                await self._refuse(flight.scope, flight.receive, flight.send)
                # its work is abandoned: the replica then has nothing left to wait for
                flight.task.cancel()
        await asyncio.sleep(SETTLE_S)
        return len(left)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = openai_error(
            503, f"the server is shutting down; retry in {self.retry_after} s", "server_error",
            code="shutting_down", headers={"Retry-After": self.retry_after},
        )
        await response(scope, receive, send)


@ray.remote(num_cpus=0)
class StopSignal:
    """How `darkroom serve` tells its ingress replicas to drain, and learns when they have.

    Each replica waits on `started` from its start; `darkroom serve` calls `start` on SIGINT or
    SIGTERM and then `wait_drained`. A plain actor rather than a call through the deployment
    handle: a handle call reaches one replica of Serve's choosing, and queues behind the very
    requests it is meant to stop.
    """

    def __init__(self) -> None:
        self._started = asyncio.Event()
        self._seconds = 0.0
        self._drained: dict[str, int] = {}
        self._changed = asyncio.Event()

    async def started(self) -> float:
        """Returns the drain time once the stop has begun."""
        await self._started.wait()
        return self._seconds

    async def start(self, seconds: float) -> None:
        self._seconds = seconds
        self._started.set()

    async def drained(self, replica: str, left: int) -> None:
        self._drained[replica] = left
        self._changed.set()

    async def wait_drained(self, replicas: int, seconds: float) -> dict[str, int]:
        """Until `replicas` replicas have reported (or `seconds`): replica -> requests left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(self._drained) < replicas and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=deadline - loop.time())
            except TimeoutError:
                break
        return dict(self._drained)


async def drain_on_signal(signal: Any, gate: Gate, replica: str) -> None:
    """In an ingress replica: wait for the stop, drain, and report back."""
    try:
        seconds = await signal.started.remote()
        left = await gate.drain(seconds)
        await signal.drained.remote(replica, left)
    except ray.exceptions.RayActorError:
        # the `darkroom serve` that started this app is gone without draining it
        logger.warning("the stop signal's actor is gone; this replica will not drain")
