"""What stands in front of the ingress's routes: the request-size limit, the API key, the body
deadline and the drain on stop.

All are plain ASGI middlewares on the FastAPI app, so they act before a route reads the body,
and every refusal is an OpenAI-shaped error. In order: a declared size over the limit is refused
(413), then a request without the key (401), both before a byte of the body is read; then the
body is read whole, within the size limit and a deadline (408), before the app sees it. So a
client without the key holds nothing past its headers, and a slow one holds a slot for at most
the deadline. The stop signal is a small Ray actor that `darkroom serve` creates and every
ingress replica waits on.
"""

# No `from __future__ import annotations`: Ray reads the actor's method signatures.

import asyncio
import hashlib
import hmac
import logging
import re
from typing import Any

import ray
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("ray.serve")
# After the drain, how long the gate keeps answering 503 before it reports drained: requests
# sent before the drain may still be on their way through Serve's proxy and the replica's queue
SETTLE_S = 1.0
NO_KEY = "missing or wrong API key: send `Authorization: Bearer KEY`"


def openai_error(
    status: int, message: str, kind: str, param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`, in valid UTF-8
    whatever the message quotes."""
    body = {"error": {"message": printable(message), "type": kind,
                      "param": None if param is None else printable(param), "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (JSON's `"\\ud800"` decodes to one, and no
    encoder takes it) is shown as its escape, so an error can quote what it was sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def key_matches(authorization: str | None, digest: str) -> bool:
    """Whether an `Authorization` header carries the bearer key of SHA-256 `digest` (compared
    in constant time)."""
    return key_of(authorization, {digest: "key"}) is not None


def key_of(authorization: str | None, digests: dict[str, str]) -> str | None:
    """The name of the key (SHA-256 -> name) an `Authorization` header carries, or None; each
    digest compared in constant time."""
    scheme, _, key = (authorization or "").partition(" ")
    given = hashlib.sha256(key.strip().encode("utf-8", "backslashreplace")).hexdigest()
    found = None
    for digest, name in digests.items():
        if hmac.compare_digest(given, digest):
            found = name
    return found if scheme.lower() == "bearer" else None


def _header(scope: Scope, name: bytes) -> bytes:
    return dict(scope["headers"]).get(name, b"")


def _has_body(scope: Scope) -> bool:
    declared = _header(scope, b"content-length")
    return (declared.isdigit() and int(declared) > 0) or bool(_header(scope, b"transfer-encoding"))


# -- the request-size limit and the body deadline ----------------------------------------------


def too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


def _too_large(limit: int) -> JSONResponse:
    # the rest of the body is never read: the connection cannot carry another request
    return openai_error(413, too_large(limit), "invalid_request_error", code="request_too_large",
                        headers={"Connection": "close"})


class SizeLimit:
    """Refuses a declared Content-Length over `max_bytes` (413) before anything else is done,
    the API key included; a body without one is counted by `BodyReader`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-length") if scope["type"] == "http" else b""
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class KeyCheck:
    """Refuses a request without an API key (401) from its headers, before its body is read:
    a client without the key holds a slot only for the time of that answer. `open_paths`
    (health, API docs) and paths matching `open_pattern` need no key. The key's name goes to
    the request's state (`request.state.api_key`)."""

    def __init__(self, app: ASGIApp, digests: dict[str, str], open_paths: set[str],
                 open_pattern: str | None = None) -> None:
        self.app = app
        self.digests = digests
        self.open_paths = open_paths
        self.open_pattern = re.compile(open_pattern) if open_pattern else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        name = key_of(_header(scope, b"authorization").decode("latin-1"), self.digests)
        if name is not None:
            scope.setdefault("state", {})["api_key"] = name
        if name is not None or path in self.open_paths or (
                self.open_pattern and self.open_pattern.match(path)):
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer"}
        if _has_body(scope):  # left unread: the connection cannot carry another request
            headers["Connection"] = "close"
        await openai_error(401, NO_KEY, "authentication_error", headers=headers)(
            scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path inside the app (Serve mounts it under its route prefix, the `root_path`)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


class _TooLarge(Exception):
    pass


class BodyReader:
    """Reads a request's whole body before the app sees it: at most `max_bytes` (413 at the
    first chunk past it), and all of it within `timeout_s` of the request's start (408). A
    client that sends its body slowly, or stops halfway, holds a slot for at most that long;
    the ingress never holds more than the limit plus one chunk."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_s:g} s"
            await openai_error(408, message, "invalid_request_error", code="request_timeout",
                               headers={"Connection": "close"})(scope, receive, send)
            return
        except _TooLarge:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        read = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            read += len(chunk)
            if read > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The app's `receive`: the body read ahead, then the client's own (its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


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
