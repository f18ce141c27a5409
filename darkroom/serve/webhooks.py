"""Webhook deliveries of job events, signed the Standard Webhooks way (standardwebhooks.com):
`webhook-id` (one per event, the same on every retry), `webhook-timestamp` (Unix seconds of the
attempt) and `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with the
deployment's secret (`whsec_` + base64, or any text taken as its bytes).

A target is checked when a request names it and again before each delivery: http(s) only, a
host of `webhooks.allow_hosts` when that list is set, and every address the host resolves to
public (no loopback, private, link-local, reserved or multicast ones) unless `allow_private`:
the endpoint cannot be made to call inside its own network. Redirects are not followed.

Deliveries are documents in the job store, due when they are to be sent; a delivery is claimed
by one ingress replica at a time (compare-and-swap), sent, and retried with doubling backoff up
to `max_attempts`. A receiver may see an event again only after it failed to answer 2xx (or a
replica died while sending it): the `webhook-id` tells repeats apart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from darkroom.serve.jobs.store import Store
from darkroom.serve.jobs.waiting import woken

logger = logging.getLogger("ray.serve")
TOLERANCE_S = 300  # a receiver refuses signatures older than this (replays)


class WebhookSettings(BaseModel):
    """The serve file's `webhooks:` as the ingress needs them (the secret resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_attempts: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 10.0
    progress_every_s: float = 1.0


def signing_key(secret: str) -> bytes:
    """`whsec_BASE64` -> its bytes; any other secret -> its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of a message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """What a receiver checks: a `v1` signature of this body matches, and it is recent."""
    headers = {k.lower(): v for k, v in headers.items()}
    message_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not stamp.isdecimal() or abs((now or time.time()) - int(stamp)) > TOLERANCE_S:
        return False
    expected = sign(secret, message_id, int(stamp), body).removeprefix("v1,")
    given = [s.removeprefix("v1,") for s in headers.get("webhook-signature", "").split()
             if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


class TargetRefused(ValueError):
    """A webhook URL the endpoint will not call."""


def check_target(url: str, settings: WebhookSettings) -> None:
    """Raises `TargetRefused`, saying why, for a URL the module's rules refuse (resolves the
    host: blocking)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused(f"`webhook` must be an http(s) URL with a host, got {url[:100]!r}")
    if settings.allow_hosts and not any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
            for allowed in settings.allow_hosts):
        raise TargetRefused(f"`webhook` host {host!r} is not in this server's "
                            f"`webhooks.allow_hosts`")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 443)}
    except OSError as err:
        raise TargetRefused(f"`webhook` host {host!r} does not resolve ({err})") from None
    for address in sorted(addresses):
        ip = ipaddress.ip_address(address.split("%")[0])
        if not settings.allow_private and not ip.is_global:
            raise TargetRefused(
                f"`webhook` host {host!r} is {address}, a loopback, private or reserved "
                "address: refused (a server may allow them with `webhooks.allow_private`)")


Render = Callable[[str, str], Awaitable[dict[str, Any] | None]]  # (job id, event) -> payload


class Deliverer:
    """Sends due deliveries from the store, in one ingress replica."""

    def __init__(self, store: Store, settings: WebhookSettings, render: Render,
                 poll_s: float = 0.2, keep_s: float = 3600.0) -> None:
        self.store = store
        self.settings = settings
        self.render = render
        self.poll_s = poll_s
        self.keep_s = keep_s  # how long a finished delivery's record stays
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await woken(self._wake, self.poll_s)
                self._wake.clear()
                try:
                    due = await asyncio.to_thread(self.store.due, "delivery", time.time(), 32)
                    await asyncio.gather(*(self._deliver(http, key) for key in due))
                except Exception:  # the store is unreachable for now: try again later
                    logger.exception("webhook deliveries failed; retrying")
                    await asyncio.sleep(1.0)

    async def _deliver(self, http: Any, key: str) -> None:
        found = await asyncio.to_thread(self.store.get, "delivery", key)
        if found is None:
            return
        doc, version = found
        now = time.time()
        # claimed for the time one attempt can take: another replica leaves it alone
        claimed = {**doc, "attempts": doc["attempts"] + 1}
        if not await asyncio.to_thread(self.store.swap, "delivery", key, version, claimed,
                                       now + self.settings.timeout_s + 5, None, now):
            return
        outcome = await self._send(http, doc)
        attempts = claimed["attempts"]
        if outcome is None:
            done = {**claimed, "state": "delivered", "at": time.time()}
            due, expires = None, time.time() + self.keep_s
        elif attempts >= self.settings.max_attempts or outcome.startswith("refused"):
            done = {**claimed, "state": "failed", "error": outcome}
            due, expires = None, time.time() + self.keep_s
            logger.warning("webhook %s of %s not delivered: %s", doc["event"], doc["job"],
                           outcome)
        else:
            done = {**claimed, "error": outcome}
            due = time.time() + self.settings.backoff_s * 2 ** (attempts - 1)
            expires = None
        await asyncio.to_thread(self.store.swap, "delivery", key, version + 1, done, due,
                                expires)

    async def _send(self, http: Any, doc: dict[str, Any]) -> str | None:
        """One attempt; None when the receiver answered 2xx, else why not."""
        try:
            await asyncio.to_thread(check_target, doc["url"], self.settings)
        except TargetRefused as err:
            return f"refused: {err}"
        payload = await self.render(doc["job"], doc["event"])
        if payload is None:
            return "refused: the job is gone"
        body = json.dumps(payload).encode()
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": doc["message"],
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(self.settings.secret or "", doc["message"], stamp,
                                             body)}
        try:
            async with http.post(doc["url"], data=body, headers=headers,
                                 allow_redirects=False) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except Exception as err:
            return f"{type(err).__name__}: {str(err)[:200]}"
