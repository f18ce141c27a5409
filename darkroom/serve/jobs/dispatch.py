"""The ingress's side of jobs: a dispatcher that takes queued jobs and sends their rows to the
model deployment, as the synchronous route does, and waiting for a job to finish.

Each ingress replica runs one dispatcher. It claims jobs up to its share of what the model
deployment can hold, keeps their leases alive while their calls are out, and reads the outcome:
a model that was only busy puts the job back (the attempt not counted); a replica that died puts
it back as a spent attempt (or fails it once its attempts are spent). The replica writes each
image's result itself, so a job whose ingress died meanwhile still completes, once; the
dispatcher writes any result the replica could not. Waiters (a synchronous request through a job,
a long-poll `GET`) are woken at once when this replica finishes a job, else poll the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.jobs.book import Job, JobBook
from darkroom.serve.jobs.waiting import woken

logger = logging.getLogger("ray.serve")
# (rows, extras) -> each row's answer or the exception its call raised
RunRows = Callable[[list[RequestRow], list[dict[str, Any]]], Awaitable[list[Any]]]


class Busy(Exception):
    """The model deployment refused the work for now (queue full, restarting)."""


class Died(Exception):
    """The model replica working on the rows died."""


class Dispatcher:
    """Claims jobs from the book and runs them through `run_rows`."""

    def __init__(self, book: JobBook, run_rows: RunRows, worker: str, capacity: int,
                 classify: Callable[[BaseException], type[Exception] | None],
                 retry_after_s: float = 1.0, poll_s: float = 0.25,
                 skip: Callable[[Job], bool] | None = None,
                 finished: Callable[[Job], None] | None = None) -> None:
        self.book = book
        self.run_rows = run_rows
        self.worker = worker
        self.capacity = capacity  # images out at once
        self.classify = classify  # an exception -> Busy, Died or None (a failure)
        self.retry_after_s = retry_after_s
        self.poll_s = poll_s
        self.skip = skip  # a job to leave queued for now (its key's in-flight cap)
        self.finished = finished  # called with each job this replica saw finish
        self.running: dict[str, tuple[Job, asyncio.Task]] = {}
        self._wake = asyncio.Event()
        self._done: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, job_id: str, seconds: float) -> Job | None:
        """The job once it is terminal, or as it is after `seconds`; None when it is gone."""
        deadline = time.monotonic() + seconds
        pause = 0.02
        while True:
            job = await asyncio.to_thread(self.book.get, job_id)
            left = deadline - time.monotonic()
            if job is None or job.terminal or left <= 0:
                return job
            event = self._done.setdefault(job_id, asyncio.Event())
            if not await woken(event, min(pause, left)):
                pause = min(pause * 2, 0.25)

    def images_out(self) -> int:
        return sum(job.n for job, _ in self.running.values())

    async def _loop(self) -> None:
        last_touch = last_sweep = time.monotonic()
        while True:
            await woken(self._wake, self.poll_s)
            self._wake.clear()
            try:
                free = self.capacity - self.images_out()
                if free > 0:
                    for job in await asyncio.to_thread(self.book.claim, self.worker, free,
                                                       self.skip):
                        task = asyncio.get_running_loop().create_task(self._work(job))
                        self.running[job.id] = (job, task)
                now = time.monotonic()
                if self.running and now - last_touch > self.book.settings.lease_s / 3:
                    await asyncio.to_thread(self.book.touch, list(self.running))
                    last_touch = now
                if now - last_sweep > 60:
                    await asyncio.to_thread(self.book.store.sweep, time.time())
                    last_sweep = now
            except Exception:  # the store is unreachable for now: the next round tries again
                logger.exception("the job dispatcher failed a round")
                await asyncio.sleep(1.0)

    async def _work(self, job: Job) -> None:
        try:
            rows = await asyncio.to_thread(self.book.rows, job)
            extras = [job_extra(job, i) for i in range(len(rows))]
            answers = await self.run_rows(rows, extras)
            await self._settle(job, answers)
        except Exception as err:  # the store, or rows that cannot be read: fail the job
            logger.exception("job %s failed", job.id)
            await asyncio.to_thread(self.book.fail, job.id, job.attempt,
                                    f"the server failed on this job ({type(err).__name__})")
        finally:
            self.running.pop(job.id, None)
            self.wake()  # room for the next job
            found = await asyncio.to_thread(self.book.get, job.id)
            if found is not None and found.terminal and self.finished:
                self.finished(found)
            event = self._done.pop(job.id, None)
            if event is not None:
                event.set()

    async def _settle(self, job: Job, answers: list[Any]) -> None:
        """What the answers of a job's rows mean for it."""
        errors = [a for a in answers if isinstance(a, BaseException)]
        kinds = {self.classify(e) for e in errors}
        if Died in kinds:
            await asyncio.to_thread(self.book.requeue, job.id, job.attempt,
                                    "the model replica died while working on it")
            return
        if Busy in kinds:
            await asyncio.to_thread(self.book.requeue, job.id, job.attempt, "the model was busy",
                                    self.retry_after_s, False)
            return
        if errors:
            raise errors[0]
        now = await asyncio.to_thread(self.book.get, job.id)
        if now is None or now.terminal or now.attempt != job.attempt:
            return
        for index, answer in enumerate(answers):  # those the replica could not write
            if now.results[index] is None:
                await asyncio.to_thread(self.book.finish, job.id, job.attempt, index, answer)


def job_extra(job: Job, index: int) -> dict[str, Any]:
    """What the model replica needs to know about a job's row."""
    request = job.request
    hook = job.webhook
    return {"job": {"id": job.id, "attempt": job.attempt, "index": index, "owner": job.owner,
                    "progress_hook": hook.model_dump() if hook and "progress" in hook.events
                    else None},
            "output": {"format": request.get("output_format", "png"),
                       "compression": request.get("output_compression"),
                       "url": request.get("response_format") == "url"}}
