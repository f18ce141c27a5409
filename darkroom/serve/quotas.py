"""Per API key: a token bucket of images (rate and burst) and a cap on images in flight; and the
usage of each key (images, denoising steps, model seconds) as Prometheus counters.

A request over its key's rate or in-flight cap gets a 429 in OpenAI's shape with `Retry-After`
(when the bucket will hold enough tokens again). Async jobs are admitted by the bucket; the
in-flight cap holds them in the queue instead (the dispatcher takes a key's next job once its
images in flight leave room). Buckets live in each ingress replica.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

MAX = 100_000


class Quota(BaseModel):
    """One key's limits; unset: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    images_per_s: float | None = Field(None, gt=0, le=MAX,
                                       description="images a key may ask for per second")
    burst: int | None = Field(None, ge=1, le=MAX,
                              description="images a key may ask for at once (the bucket's size; "
                              "default: a second's worth, at least 1)")
    max_in_flight: int | None = Field(None, ge=1, le=MAX,
                                      description="images of a key generating at a time")


class QuotaExceeded(Exception):
    """429: the key's rate or in-flight cap; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenBucket:
    """`rate` tokens a second, up to `capacity` (Turner 1986's token bucket)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.updated = capacity, time.monotonic()

    def take(self, cost: float) -> float:
        """Takes `cost` tokens and returns 0, or takes nothing and returns the seconds until
        there will be enough."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class Quotas:
    """The buckets and in-flight counts of this ingress replica, per key name."""

    def __init__(self, default: Quota, per_key: dict[str, Quota] | None = None) -> None:
        self.default = default
        self.per_key = per_key or {}
        self.buckets: dict[str, TokenBucket] = {}
        self.in_flight: dict[str, int] = {}

    def quota(self, key: str) -> Quota:
        return self.per_key.get(key, self.default)

    def admit(self, key: str, images: int, held: bool = True) -> None:
        """Take `images` from the key's bucket, or raise `QuotaExceeded`; `held`: they will
        be in flight now (a synchronous request), checked against the cap first."""
        quota = self.quota(key)
        if held and quota.max_in_flight is not None:
            if self.in_flight.get(key, 0) + images > quota.max_in_flight:
                raise QuotaExceeded(
                    f"too many images in flight for this API key (at most "
                    f"{quota.max_in_flight}); retry when one is done", 1.0)
        if quota.images_per_s is None:
            return
        capacity = quota.burst or max(1, math.ceil(quota.images_per_s))
        if images > capacity:
            raise QuotaExceeded(f"this API key may ask for at most {capacity} images at once "
                                f"(its burst); ask for fewer (`n`)", 1.0)
        bucket = self.buckets.setdefault(key, TokenBucket(quota.images_per_s, capacity))
        wait = bucket.take(images)
        if wait:
            raise QuotaExceeded(f"rate limit of this API key reached ({quota.images_per_s:g} "
                                f"images/s); retry in {math.ceil(wait)} s", wait)

    @contextlib.contextmanager
    def held(self, key: str, images: int) -> Iterator[None]:
        """Counts `images` in flight for the key while the block runs."""
        self.in_flight[key] = self.in_flight.get(key, 0) + images
        try:
            yield
        finally:
            self.in_flight[key] -= images

    def full(self, key: str, images: int = 1) -> bool:
        """Whether `images` more would pass the key's in-flight cap."""
        cap = self.quota(key).max_in_flight
        return cap is not None and self.in_flight.get(key, 0) + images > cap


class Usage:
    """Per key: images made, denoising steps run and model seconds spent; Prometheus counters
    on Ray's metrics endpoint when running in Ray (`darkroom_images_total`, ...), and kept here
    for `totals`."""

    NAMES = {"images": "images made", "steps": "denoising steps run (images x steps)",
             "seconds": "model seconds spent on the key's images"}

    def __init__(self, model: str) -> None:
        self.model = model
        self.totals: dict[str, dict[str, float]] = {}
        self._counters = None

    def add(self, key: str, images: int, steps: int, seconds: float) -> None:
        done = {"images": images, "steps": steps, "seconds": seconds}
        mine = self.totals.setdefault(key, dict.fromkeys(self.NAMES, 0.0))
        for name, value in done.items():
            mine[name] += value
        counters = self._metrics()
        for name, value in done.items():
            if counters and value:
                counters[name].inc(value, tags={"key": key, "model": self.model})

    def _metrics(self) -> dict | None:
        if self._counters is None:
            self._counters = {}
            try:
                import ray
                from ray.serve import metrics

                if ray.is_initialized():
                    self._counters = {
                        name: metrics.Counter(f"darkroom_{name}", description=text,
                                              tag_keys=("key", "model"))
                        for name, text in self.NAMES.items()}
            except Exception:  # outside a Serve replica (in-process tests): totals only
                self._counters = {}
        return self._counters
