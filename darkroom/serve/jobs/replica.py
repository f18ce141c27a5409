"""A model replica's side of jobs and streams: per pipeline call, a step callback that records
progress, takes previews and stops the call between denoising steps once every job in it is
cancelled (or taken over by a newer attempt); after the call, each job row's result written to
the store; and a heartbeat that keeps the leases of the jobs this replica holds.

Only rows that carry a job or a stream get a callback; a call of plain synchronous rows runs as
before. A call that mixes a cancelled job with rows still wanted runs on, and the cancelled
row's image is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from darkroom.platform.engine.rows import RequestRow
from darkroom.serve.jobs.book import JobBook, JobSettings, Webhook
from darkroom.serve.jobs.store import open_store
from darkroom.serve.previews import preview, preview_steps

logger = logging.getLogger("ray.serve")
PROGRESS_EVERY_S = 0.5  # a job's progress is written at most this often


class ReplicaJobs:
    """The jobs of one model replica."""

    def __init__(self, settings: JobSettings | None, family: str,
                 progress_every_s: float = 1.0) -> None:
        self.settings = settings
        self.family = family
        self.progress_every_s = progress_every_s
        self._book: JobBook | None = None
        self.held: collections.Counter[str] = collections.Counter()
        self._heartbeat: asyncio.Task | None = None

    @property
    def book(self) -> JobBook:
        if self._book is None:
            if self.settings is None:
                raise RuntimeError("a job row reached a replica whose serve file has no jobs")
            self._book = JobBook(open_store(self.settings.store, self.settings.namespace),
                                 self.settings)
        return self._book

    # -- leases --------------------------------------------------------------------------------

    def hold(self, extra: dict[str, Any] | None) -> str | None:
        """Count a job row as held here (its lease kept alive) until `release`."""
        job = (extra or {}).get("job")
        if not job:
            return None
        self.held[job["id"]] += 1
        if self._heartbeat is None and self.settings is not None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        return job["id"]

    def release(self, job_id: str | None) -> None:
        if job_id is not None:
            self.held[job_id] -= 1
            if self.held[job_id] <= 0:
                del self.held[job_id]

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            if self.held:
                try:
                    await asyncio.to_thread(self.book.touch, list(self.held))
                except Exception:
                    logger.exception("could not keep the jobs' leases")

    # -- a pipeline call -----------------------------------------------------------------------

    def stopped_rows(self, extras: list[dict[str, Any] | None]) -> set[int]:
        """The positions of job rows whose jobs no longer want them (before the call)."""
        refs = _refs(extras)
        if not refs:
            return set()
        stopped = self.book.stopped({job: attempt for job, (attempt, _) in refs.items()})
        return {i for job, (_, places) in refs.items() if job in stopped for i in places}

    def on_step(self, extras: dict[str, dict[str, Any]], emit: Callable[[str, dict], None],
                stops: dict[str, dict[str, Any]], size: tuple[int, int]
                ) -> Callable[[list[RequestRow]], Any] | None:
        """The generator's `on_step` for a group of images of `size` whose rows (by row id)
        carry `extras`; None when no row needs one. `emit(stream, event)` sends a preview;
        `stops` collects where each cancelled job stopped."""
        if not extras:
            return None

        def for_call(rows: list[RequestRow]) -> Callable[[int, int, Any], bool]:
            mine = [(i, extras.get(row.row_id)) for i, row in enumerate(rows)]
            return StepWatch(self, mine, emit, stops, len(rows), size)

        return for_call

    # -- results -------------------------------------------------------------------------------

    def finish(self, extra: dict[str, Any], answer: dict[str, Any],
               stop: dict[str, Any] | None) -> None:
        """Write a job row's answer (or that it stopped) to the store."""
        job = extra["job"]
        if answer.get("cancelled") or stop:
            answer = {"cancelled": True}
        try:
            self.book.finish(job["id"], job["attempt"], job["index"], answer, stop)
        except Exception:  # the dispatcher writes it from the answer, if it is still there
            logger.exception("could not write the result of job %s", job["id"])


class StepWatch:
    """The step callback of one pipeline call."""

    def __init__(self, jobs: ReplicaJobs, rows: list[tuple[int, dict[str, Any] | None]],
                 emit: Callable[[str, dict], None], stops: dict[str, dict[str, Any]],
                 count: int, size: tuple[int, int]) -> None:
        self.jobs = jobs
        self.emit = emit
        self.stops = stops
        self.count = count  # rows in the call
        self.size = size  # of its images
        self.job_rows = [(i, e["job"]) for i, e in rows if e and e.get("job")]
        self.previews = [(i, e["preview"]) for i, e in rows if e and e.get("preview")]
        self.step_ends: list[float] = []
        self.last_progress = 0.0
        self.last_event: dict[str, float] = {}

    def __call__(self, step: int, steps: int, latents: Any) -> bool:
        now = time.time()
        self.step_ends.append(now)
        for place, wanted in self.previews:
            self._preview(place, wanted, step, steps, latents)
        if not self.job_rows:
            return False
        book = self.jobs.book
        jobs = {job["id"]: job for _, job in self.job_rows}
        if step == 1 or step == steps or now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            for job in jobs.values():
                book.put_progress(job["id"], step, steps)
                self._progress_event(job, step, now)
        stopped = book.stopped({job["id"]: job["attempt"] for job in jobs.values()})
        for job_id, asked in stopped.items():
            if job_id not in self.stops:
                after = sum(1 for t in self.step_ends if asked is not None and t >= asked)
                self.stops[job_id] = {"step": step, "steps": steps, "after_request": after}
        # stop the call only when nothing in it is wanted anymore
        return len(self.job_rows) == self.count and set(jobs) <= set(self.stops)

    def _progress_event(self, job: dict[str, Any], step: int, now: float) -> None:
        hook = job.get("progress_hook")
        if hook and now - self.last_event.get(job["id"], 0.0) >= self.jobs.progress_every_s:
            self.last_event[job["id"]] = now
            self.jobs.book.progress_event(job["id"], step, Webhook.model_validate(hook))

    def _preview(self, place: int, wanted: dict[str, Any], step: int, steps: int,
                 latents: Any) -> None:
        if latents is None or step not in preview_steps(wanted["count"], steps):
            return
        try:
            image = preview(latents[place], self.jobs.family, *self.size,
                            wanted.get("format", "png"))
        except Exception:  # a preview is a courtesy: never fail the image for it
            logger.exception("a preview failed")
            return
        index = sorted(preview_steps(wanted["count"], steps)).index(step)
        self.emit(wanted["stream"], {"index": index, "image": image})


def _refs(extras: list[dict[str, Any] | None]) -> dict[str, tuple[int, list[int]]]:
    """job id -> (its attempt, the positions of its rows)."""
    refs: dict[str, tuple[int, list[int]]] = {}
    for place, extra in enumerate(extras):
        job = (extra or {}).get("job")
        if job:
            refs.setdefault(job["id"], (job["attempt"], []))[1].append(place)
    return refs
