"""The job state machine over a `Store`: queued -> in_progress -> succeeded | failed | cancelled.

A job's document holds its state, its attempt and the results of its images; its request rows
and images are blobs. Every transition is one compare-and-swap, so two workers never both win:
a queued job is claimed by one dispatcher (attempt + 1, a lease in the due index); whoever works
on it keeps the lease alive (`touch`); a job whose lease ran out (its worker died) is claimed
again, up to `max_attempts`, then failed with a clear error; an image's result is taken only
from the job's current attempt, so a stale worker never completes a job a second time. The
webhook deliveries a transition causes are written in the same swap. Terminal jobs expire after
`result_ttl_s`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.jobs.store import Insert, Store

Status = Literal["queued", "in_progress", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")
EVENTS = ("start", "progress", "completed")
BYTES_FIELDS = ("image", "mask", "control_image")
GONE = "the job store no longer has it"


class JobSettings(BaseModel):
    """How the book keeps jobs (the serve file's `jobs:` section, resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str  # the store's URI
    namespace: str = "darkroom"
    result_ttl_s: float = 3600.0
    lease_s: float = 30.0
    max_attempts: int = 2
    idempotency_ttl_s: float = 86400.0


class Webhook(BaseModel):
    """Where a job's events go, and which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    events: tuple[str, ...] = EVENTS


class Job(BaseModel):
    """A job's document."""

    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str = ""  # the API key's name; another key never sees the job
    route: str = "generations"
    status: Status = "queued"
    created_at: float
    queued_at: float  # its place in the queue
    started_at: float | None = None
    completed_at: float | None = None
    n: int
    attempt: int = 0
    max_attempts: int = 2
    request: dict[str, Any] = Field(default_factory=dict)  # what the view shows back
    body_sha256: str = ""
    cancel_requested_at: float | None = None
    stop: dict[str, Any] | None = None  # where a cancelled call stopped: step, steps, after
    results: list[dict[str, Any] | None] = Field(default_factory=list)
    error: dict[str, Any] | None = None
    webhook: Webhook | None = None
    failures: list[str] = Field(default_factory=list)  # why earlier attempts ended

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class IdempotencyConflict(Exception):
    """The same Idempotency-Key with another body: 422."""


def new_id(prefix: str = "job") -> str:
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def body_digest(body: dict[str, Any], files: dict[str, bytes] | None = None) -> str:
    """SHA-256 of a request's fields (canonical JSON) and its files: what a repeat must match."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    for name, data in sorted((files or {}).items()):
        digest.update(name.encode() + hashlib.sha256(data).digest())
    return digest.hexdigest()


def rows_blob(rows: list[RequestRow]) -> bytes:
    """Request rows as JSON (their image bytes in base64)."""
    records = []
    for row in rows:
        record = row.model_dump()
        for name in BYTES_FIELDS:
            if record[name] is not None:
                record[name] = base64.b64encode(record[name]).decode()
        records.append(record)
    return json.dumps(records).encode()


def rows_of(blob: bytes) -> list[RequestRow]:
    records = json.loads(blob)
    for record in records:
        for name in BYTES_FIELDS:
            if record.get(name) is not None:
                record[name] = base64.b64decode(record[name])
    return [RequestRow.model_validate(r) for r in records]


class JobBook:
    """Jobs in a store; each method one or a few store calls (blocking: call from a thread)."""

    def __init__(self, store: Store, settings: JobSettings) -> None:
        self.store = store
        self.settings = settings

    # -- submitting and reading ----------------------------------------------------------------

    def submit(self, job: Job, rows: list[RequestRow], key: str | None = None
               ) -> tuple[Job, bool]:
        """Store a new job, or, for an Idempotency-Key already used by this owner, the first
        request's job (`IdempotencyConflict` when its body differed). (job, created)."""
        now = time.time()
        if key is not None:
            idem = Insert("idem", f"{job.owner}:{key}", {"job": job.id, "body": job.body_sha256},
                          expires=now + self.settings.idempotency_ttl_s)
            first, _, inserted = self.store.insert(idem)
            if not inserted:
                if first["body"] != job.body_sha256:
                    raise IdempotencyConflict(key)
                return self._wait_for(first["job"]), False
        self.store.put_blob(f"rows:{job.id}", rows_blob(rows), expires=None)
        self.store.insert(Insert("job", job.id, job.model_dump(mode="json"), due=job.queued_at))
        return job, True

    def _wait_for(self, job_id: str, seconds: float = 5.0) -> Job:
        """The job of an idempotency record, which its first request may still be writing."""
        deadline = time.monotonic() + seconds
        while True:
            job = self.get(job_id)
            if job is not None or time.monotonic() > deadline:
                if job is None:
                    raise KeyError(job_id)
                return job
            time.sleep(0.02)

    def get(self, job_id: str) -> Job | None:
        found = self.store.get("job", job_id)
        return None if found is None else Job.model_validate(found[0])

    def rows(self, job: Job) -> list[RequestRow]:
        blob = self.store.get_blob(f"rows:{job.id}")
        if blob is None:
            raise KeyError(f"the request rows of {job.id}")
        return rows_of(blob)

    def image(self, job_id: str, index: int) -> bytes | None:
        return self.store.get_blob(f"img:{job_id}:{index}")

    def position(self, job: Job) -> int:
        return self.store.rank("job", job.id) if job.status == "queued" else 0

    def progress(self, job_id: str) -> dict[str, Any] | None:
        blob = self.store.get_blob(f"progress:{job_id}")
        return None if blob is None else json.loads(blob)

    # -- the dispatcher's side -----------------------------------------------------------------

    def claim(self, worker: str, limit: int, skip: Callable[[Job], bool] | None = None
              ) -> list[Job]:
        """Up to `limit` jobs taken to work on: queued ones in order, then ones whose lease ran
        out (their worker is gone); each one's attempt counted. A job past its attempts fails."""
        claimed = []
        now = time.time()
        for job_id in self.store.due("job", now, 4 * limit):
            if len(claimed) >= limit:
                break
            found = self.store.get("job", job_id)
            if found is None:
                continue
            job, version = Job.model_validate(found[0]), found[1]
            if job.terminal or (skip and skip(job)):
                continue
            if job.status == "in_progress" and job.attempt >= job.max_attempts:
                why = (f"its worker stopped answering during attempt {job.attempt} of "
                       f"{job.max_attempts}")
                self._swap(job, version, _failed(job, why, now), if_due_by=now)
                continue
            taken = job.model_copy(update={
                "status": "in_progress", "attempt": job.attempt + 1,
                "started_at": job.started_at or now,
                "failures": job.failures + ([f"attempt {job.attempt}: its worker stopped "
                                             "answering"] if job.status == "in_progress" else [])})
            events = ("start",) if job.started_at is None else ()
            if self._swap(taken, version, taken, if_due_by=now, events=events):
                claimed.append(taken)
        return claimed

    def touch(self, job_ids: list[str]) -> None:
        """A heartbeat: the workers of these jobs are alive."""
        self.store.touch("job", job_ids, time.time() + self.settings.lease_s)

    def requeue(self, job_id: str, attempt: int, reason: str, delay_s: float = 0.0,
                counted: bool = True) -> Job | None:
        """Put a job whose worker could not finish it back in the queue (or fail it once its
        attempts are spent); `counted` False gives the attempt back (the model was only busy)."""
        def change(job: Job) -> Job | None:
            if job.status != "in_progress" or job.attempt != attempt:
                return None
            if counted and job.attempt >= job.max_attempts:
                return _failed(job, f"{reason} (attempt {job.attempt} of {job.max_attempts})")
            return job.model_copy(update={
                "status": "queued", "attempt": job.attempt - (0 if counted else 1),
                "queued_at": time.time() + delay_s,
                "failures": job.failures + ([f"attempt {job.attempt}: {reason}"] if counted
                                            else [])})

        return self._update(job_id, change)

    def fail(self, job_id: str, attempt: int, message: str, status: int = 500,
             param: str | None = None) -> Job | None:
        def change(job: Job) -> Job | None:
            if job.terminal or job.attempt != attempt:
                return None
            return _failed(job, message, status=status, param=param)

        return self._update(job_id, change)

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; one in progress is asked to stop (its worker
        stops between denoising steps and records it)."""
        def change(job: Job) -> Job | None:
            if job.terminal or job.cancel_requested_at is not None:
                return None
            now = time.time()
            if job.status == "queued":
                return job.model_copy(update={"status": "cancelled", "completed_at": now,
                                              "cancel_requested_at": now})
            return job.model_copy(update={"cancel_requested_at": now})

        return self._update(job_id, change) or self.get(job_id)

    # -- the worker's side ---------------------------------------------------------------------

    def stopped(self, refs: dict[str, int]) -> dict[str, float | None]:
        """Of the jobs (id -> the attempt a worker runs), those it should stop: cancelled
        (-> when that was asked) or no longer its own (-> None: done, or taken over)."""
        docs = self.store.get_many("job", list(refs))
        out: dict[str, float | None] = {}
        for job_id, attempt in refs.items():
            doc = docs.get(job_id)
            if doc is None or doc["status"] in TERMINAL or doc["attempt"] != attempt:
                out[job_id] = None
            elif doc.get("cancel_requested_at") is not None:
                out[job_id] = doc["cancel_requested_at"]
        return out

    def put_progress(self, job_id: str, step: int, steps: int) -> None:
        self.store.put_blob(f"progress:{job_id}", json.dumps({"step": step, "steps": steps})
                            .encode(), expires=time.time() + self.settings.result_ttl_s)

    def progress_event(self, job: str, step: int) -> None:
        """A progress webhook (deliveries are keyed, so each step's is sent at most once)."""
        found = self.store.get("job", job)
        if found is not None:
            hook = Job.model_validate(found[0]).webhook
            if hook and "progress" in hook.events:
                self.store.insert(_delivery(job, f"progress:{step}", hook))

    def finish(self, job_id: str, attempt: int, index: int, answer: dict[str, Any],
               stop: dict[str, Any] | None = None) -> Job | None:
        """One image's answer from the worker of `attempt`: its image kept, the job done when
        every image is (failed at the first that failed; cancelled when asked and stopped).
        Returns the job when this answer changed it; None when it came too late."""
        image = answer.get("image")
        if image is not None:
            self.store.put_blob(f"img:{job_id}:{index}", image,
                                expires=time.time() + self.settings.result_ttl_s + 3600)

        def change(job: Job) -> Job | None:
            if job.terminal or job.attempt != attempt or job.results[index] is not None:
                return None
            now = time.time()
            if job.cancel_requested_at is not None and (answer.get("cancelled") or stop):
                return job.model_copy(update={"status": "cancelled", "completed_at": now,
                                              "stop": stop})
            results = list(job.results)
            results[index] = {k: v for k, v in answer.items() if k != "image"}
            done = job.model_copy(update={"results": results})
            if answer.get("error"):
                return _failed(done, answer["error"], status=answer.get("status", 400),
                               param=answer.get("param"))
            if all(r is not None for r in results):
                status = "cancelled" if job.cancel_requested_at is not None else "succeeded"
                return done.model_copy(update={"status": status, "completed_at": now})
            return done

        return self._update(job_id, change)

    # -- swaps ---------------------------------------------------------------------------------

    def _update(self, job_id: str, change: Callable[[Job], Job | None]) -> Job | None:
        """Apply `change` to the job's current document until the swap wins; None when the job
        is gone or `change` leaves it as it is."""
        while True:
            found = self.store.get("job", job_id)
            if found is None:
                return None
            job, version = Job.model_validate(found[0]), found[1]
            new = change(job)
            if new is None:
                return None
            if self._swap(job, version, new):
                return new

    def _swap(self, old: Job, version: int, new: Job, if_due_by: float | None = None,
              events: tuple[str, ...] = ()) -> bool:
        now = time.time()
        if new.terminal and not old.terminal:
            events += ("completed",)
        inserts = tuple(_delivery(new.id, e, new.webhook) for e in events
                        if new.webhook and e in new.webhook.events)
        due, expires = None, None
        if new.status == "queued":
            due = new.queued_at
        elif new.status == "in_progress":
            due = now + self.settings.lease_s
        else:
            expires = (new.completed_at or now) + self.settings.result_ttl_s
        won = self.store.swap("job", new.id, version, new.model_dump(mode="json"), due, expires,
                              if_due_by=if_due_by, inserts=inserts)
        if won and new.terminal and not old.terminal:
            self.store.delete_blobs([f"rows:{new.id}"])
        return won


def _failed(job: Job, message: str, now: float | None = None, status: int = 500,
            param: str | None = None) -> Job:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return job.model_copy(update={
        "status": "failed", "completed_at": now or time.time(),
        "error": {"message": message, "type": kind, "param": param,
                  "code": None if status < 500 else "job_failed"}})


def _delivery(job_id: str, event: str, hook: Webhook) -> Insert:
    """The webhook delivery of one event of a job (its key makes it unique)."""
    return Insert("delivery", f"{job_id}:{event}",
                  {"job": job_id, "event": event.split(":")[0], "url": hook.url,
                   "message": new_id("msg"), "attempts": 0}, due=time.time())
