"""The model deployment: the platform's ImageGenerator behind `@serve.batch`.

One call is one image (a request row). Concurrent calls on a replica form a batch; the batch is
split into groups of equal settings (sampler, steps, size, guidance), and each group is one
pipeline call. Groups run cheapest first, and a group's callers are answered as soon as their
group is done, so a request never waits for a more expensive, incompatible neighbour's images.
A row the pipeline or the safety checker fails on, for whatever reason, fails alone: the call is
split until the rows that fail are on their own (`contained`), and their callers get an error
while their batch-mates get their images.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import numpy as np
from ray import serve

from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.models.runtime import configure_threads
from darkroom.serve.adapters import ServedAdapters
from darkroom.serve.jobs.replica import ReplicaJobs
from darkroom.serve.outputs import StoredImages, shaped
from darkroom.serve.spec import ServeSpec, job_settings

logger = logging.getLogger("ray.serve")
PENDING = "pending"  # a batch member whose group has not run yet
Item = TypeVar("Item")
Out = TypeVar("Out")


class Verdict(NamedTuple):
    """The safety checker's word on one image; `failed` when it could not give one."""

    score: float | None = None
    flagged: bool = False
    failed: bool = False


class GroupFailed:
    """A group failed outside the pipeline call and the check (which contain their own
    failures): its callers re-raise, the rest of the batch goes on."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@serve.deployment(name="ImageModel")
class ImageModel:
    """A model replica: holds one ImageGenerator (and the safety checker) for its whole life."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = ServeSpec.model_validate(spec)
        self.generator = ImageGenerator(
            self.spec.model,
            sampler=self.spec.defaults.sampler_spec,
            runtime=self.spec.runtime.model_copy(update={
                "batch_size": self.spec.runtime.batch_size or self.spec.batching.max_batch_size}),
            defaults={
                "steps": self.spec.defaults.steps,
                "guidance_scale": self.spec.defaults.guidance_scale,
            },
            preload_adapters=False,  # each when first asked for (ServedAdapters)
        )
        self.conditioning = self.generator.family.conditioning.name
        self.inputs = self.generator.family.conditioning
        self.class_conditional = self.conditioning == "class"
        self.checker = _safety_checker(self.spec) if self.spec.safety.on else None
        # One thread owns the pipeline: calls never overlap, and the event loop stays free to
        # collect the next batch while this one runs. The safety checker has its own thread, so
        # the next batch is generated while this one is checked (a GPU does not wait for it).
        self.pipeline = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="pipeline",
            initializer=configure_threads,
            initargs=(self.spec.runtime, self.generator.device),
        )
        self.safety = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety")
        self.adapters = ServedAdapters(self.generator, self.spec.model.loras, self.pipeline,
                                       self.spec.max_adapters_per_replica)
        # Serve splits a formed batch by adapter (multiplexed model id): room for a full batch
        # of each adapter a replica holds, plus the base model; the ImageGenerator still calls the
        # pipeline with at most max_batch_size rows
        held = 1 + min(len(self.spec.model.loras), self.spec.max_adapters_per_replica)
        self._batched.set_max_batch_size(self.spec.batching.max_batch_size * held)
        self._wait_s = self.spec.batching.batch_wait_timeout_s
        self._busy_until = 0.0  # when the running pipeline call is expected to end
        self._seconds_per_work = 0.0  # of the last pipeline call, per image x steps x pixels
        self._waiting: set[int] = set()  # tickets of rows not yet in the pipeline
        # expected pipeline seconds of each formed group that has not started: Serve splits a
        # batch by adapter, so one formed batch can be several pipeline calls in a row
        self._queued: dict[int, float] = {}
        self._tickets = itertools.count()
        self.jobs = ReplicaJobs(job_settings(self.spec), self.generator.family.name,
                                self.spec.webhooks.progress_every_s)
        self.stored = StoredImages(self.spec.outputs.uri) if self.spec.outputs else None
        self._streams: dict[str, asyncio.Queue] = {}  # stream id -> its previews
        self._loop: asyncio.AbstractEventLoop | None = None

    async def generate(self, row: RequestRow | dict[str, Any],
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request row in, one answer out (see `_answer`). `extra`: the row's job (progress,
        cancellation, its result written to the store), stream (previews) and output format."""
        row = row if isinstance(row, RequestRow) else RequestRow.model_validate(row)
        self._loop = self._loop or asyncio.get_running_loop()
        if row.adapters is None:  # a served row names its adapters; none named: the base model
            row = row.model_copy(update={"adapters": []})
        if self.class_conditional and row.class_label is None:
            row = row.model_copy(update={"class_label": row.prompt})
        if not self.class_conditional and row.class_label is not None:
            # the ingress refuses this already when it knows the family before loading
            return _refused(
                row, "class_label",
                f"`class_label` is for class-conditional models; {self.spec.model_id} is "
                f"{self.conditioning}-conditioned: describe the image in `prompt`",
            )
        problem = self._input_problem(row)
        if problem:  # the ingress refuses these already when it knows the family
            return _refused(row, *problem)
        key = self._settings_key(row)  # here, not in the batch: a bad row fails only itself
        # its adapters stay loaded until it is answered, even if Serve drops one meanwhile
        held = self.jobs.hold(extra)  # its lease kept alive while it is here
        async with self.adapters.held(row.adapters):
            self._batched.set_batch_wait_timeout_s(self._batch_wait_s())
            ticket = next(self._tickets)
            self._waiting.add(ticket)
            result: Any = PENDING
            try:
                # consume the whole stream, so no batch future is left unread
                async for item in self._batched((row, ticket, key, extra)):
                    if not isinstance(item, str):
                        result = item
            finally:  # also when the caller went away before its batch started
                self._waiting.discard(ticket)
                self.jobs.release(held)
        if isinstance(result, GroupFailed):
            raise result.error
        return result

    async def generate_stream(self, row: dict[str, Any], extra: dict[str, Any]
                              ) -> AsyncIterator[dict[str, Any]]:
        """`generate` as a stream: `{"partial": index, "image": bytes}` for each preview of
        `extra["preview"]` (count, format), then `{"final": answer}`."""
        stream = f"stream-{next(self._tickets)}"
        row = {**row, "row_id": stream}
        extra = {**extra, "preview": {**extra["preview"], "stream": stream}}
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[stream] = queue
        task = asyncio.get_running_loop().create_task(self.generate(row, extra))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield {"partial": event["index"], "image": event["image"]}
            yield {"final": task.result()}
        finally:
            self._streams.pop(stream, None)
            task.cancel()

    def _emit(self, stream: str, event: dict[str, Any]) -> None:
        """From the pipeline thread: a preview for a stream's caller."""
        queue = self._streams.get(stream)
        if queue is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(queue.put_nowait, event)

    def _input_problem(self, row: RequestRow) -> tuple[str, str] | None:
        """(field, message) when a row brings input images the model does not take, or lacks
        one it needs."""
        needed, optional = self.inputs.inputs, self.inputs.optional
        who = f"{self.spec.model_id} is {self.inputs.describe()}"
        if row.image is not None and "image" not in needed + optional:
            return "image", f"{who}: it edits no images; use POST /v1/images/generations"
        if row.image is None and "image" in needed:
            return "image", f"{who}: send the source image to POST /v1/images/edits"
        if row.mask is not None and "mask" not in needed + optional:
            return "mask", f"{who}: it takes no mask; leave `mask` out"
        if row.mask is None and "mask" in needed:
            return "mask", f"{who}: give `mask`, white (or transparent) where it repaints"
        return None

    def _batch_wait_s(self) -> float:
        """How long a batch that starts forming now may wait for more requests.

        Serve forms the next batch while earlier ones run or wait, and closes a batch
        `batch_wait_timeout_s` after its first request. An idle replica with nothing waiting
        starts at once. While the pipeline is busy there is no hurry: a batch may keep filling
        until the pipeline is expected to be free for it (the running call, then every group
        already formed: one per adapter and settings), so busy periods give full batches.
        """
        ahead = sum(list(self._queued.values()))
        busy_s = max(self._busy_until - time.monotonic(), 0.0) + ahead
        if busy_s <= 0 and not self._waiting:
            return 0.0  # an idle replica starts at once: a lone client never pays the wait
        return max(self._wait_s, busy_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def _batched(self, items: list[tuple[RequestRow, int, tuple, dict | None]]
                       ) -> AsyncIterator[list[Any]]:
        rows = [row for row, _, _, _ in items]
        tickets = [ticket for _, ticket, _, _ in items]
        extras = [extra for _, _, _, extra in items]
        groups: dict[tuple, list[int]] = {}
        for index, (_, _, key, _) in enumerate(items):
            groups.setdefault(key, []).append(index)
        order = sorted(groups, key=_cost)
        calls = {key: next(self._tickets) for key in order}
        for key in order:
            self._queued[calls[key]] = self._seconds_per_work * _cost(key) * len(groups[key])
        try:
            async for answers in self._run_groups(rows, tickets, extras, groups, order, calls):
                yield answers
        finally:  # groups that never started (the batch was cancelled) are not ahead anymore
            for call in calls.values():
                self._queued.pop(call, None)

    async def _run_groups(self, rows: list[RequestRow], tickets: list[int],
                          extras: list[dict | None], groups: dict[tuple, list[int]],
                          order: list[tuple], calls: dict[tuple, int]
                          ) -> AsyncIterator[list[Any]]:
        """Each group through the pipeline in `order`, its callers answered when it is done."""
        loop = asyncio.get_running_loop()
        finished: set[int] = set()
        for key in order:
            members = groups[key]
            work = _cost(key) * len(members)
            mine = [extras[i] for i in members]
            try:
                made, stops = await loop.run_in_executor(
                    self.pipeline, self._generate, [rows[i] for i in members], work,
                    [tickets[i] for i in members], calls[key], mine, key,
                )
                answers = await loop.run_in_executor(self.safety, self._check, made, mine, stops)
            except Exception as err:  # a failed group fails only its own callers
                answers = [GroupFailed(err)] * len(members)
            by_index = dict(zip(members, answers, strict=True))
            yield [by_index.get(i, StopIteration if i in finished else PENDING)
                   for i in range(len(rows))]
            finished.update(members)
            # answered callers end their stream now, not after the next group
            yield [StopIteration if i in finished else PENDING for i in range(len(rows))]

    async def loaded_adapters(self) -> dict[str, Any]:
        """Which adapters this replica holds, and how often each was loaded (for tests)."""
        if self.generator.adapters is None:
            return {"loaded": [], "loads": {}}
        return await self.adapters.state()

    def _settings_key(self, row: RequestRow) -> tuple:
        native = self.generator.native_size
        defaults = self.spec.defaults
        return (
            row.sampler or defaults.sampler,
            row.steps or defaults.steps,
            row.width or native,
            row.height or native,
            float(_first(row.guidance_scale, defaults.guidance_scale)),
            tuple(row.adapters or ()), row.lora_scale,
        )

    def _generate(
        self, rows: list[RequestRow], work: float, tickets: list[int], call: int,
        extras: list[dict | None], key: tuple,
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """On the pipeline thread: one group through the generator, timed for `_batch_wait_s`;
        rows of jobs that no longer want them are left out. Also returns where each job that
        was cancelled during the call stopped."""
        self._waiting.difference_update(tickets)
        self._queued.pop(call, None)
        gone = self.jobs.stopped_rows(extras)
        run = [i for i in range(len(rows)) if i not in gone]
        stops: dict[str, dict[str, Any]] = {}
        watched = {rows[i].row_id: extras[i] for i in run if extras[i]}
        on_step = self.jobs.on_step(watched, self._emit, stops, (key[2], key[3]))
        started = time.monotonic()
        self._busy_until = started + self._seconds_per_work * work
        try:
            made = contained(lambda some: self.generator.generate(some, on_step=on_step),
                             [rows[i] for i in run], _failed_row)
        finally:
            self._busy_until = 0.0
        if any(row["error"] is None for row in made):  # rows refused up front cost no time
            self._seconds_per_work = (time.monotonic() - started) / max(work, 1)
        out: list[dict[str, Any]] = [_cancelled(rows[i]) for i in range(len(rows))]
        for i, row in zip(run, made, strict=True):
            out[i] = row
        return out, stops

    def _check(self, out: list[dict[str, Any]], extras: list[dict | None] | None = None,
               stops: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """On the safety thread: score the group's images; flagged ones are withheld, and so
        is an image the checker fails on (that image's error). Then each image in its asked
        format (or kept for a URL), and each job row's answer written to the job store."""
        extras = extras or [None] * len(out)
        stops = stops or {}
        made = [i for i, row in enumerate(out) if row["error"] is None and row["image"]]
        verdicts: dict[int, Verdict] = {}
        if self.checker is not None and made:
            found = contained(self._verdicts, [out[i] for i in made], _unchecked)
            verdicts = dict(zip(made, found, strict=True))
        answers = []
        for i, row in enumerate(out):
            extra = extras[i] or {}
            answer = row if row.get("cancelled") else _answer(row, verdicts.get(i, Verdict()))
            job = extra.get("job")
            stop = stops.get(job["id"]) if job else None
            if stop:
                answer = _cancelled(row)
            try:
                if extra.get("output"):
                    answer = shaped(answer, extra["output"], self.stored)
            except Exception as err:  # the format or the images' store failed: this image's
                logger.exception("could not shape an image")
                answer = {**answer, "image": None, "status": 500,
                          "error": f"the server could not store or encode this image "
                                   f"({type(err).__name__})"}
            if job:
                self.jobs.finish(extra, answer, stop)
            answers.append(answer)
        return answers

    def _verdicts(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        score = np.asarray(self.checker.score([_decode(row["image"]) for row in rows]),
                           dtype=float)
        flag = np.asarray(self.checker.flags(score), dtype=bool)
        return [Verdict(s, f) for s, f in zip(score.tolist(), flag.tolist(), strict=True)]


def contained(run: Callable[[list[Item]], list[Out]], items: list[Item],
              failed: Callable[[Item, Exception], Out]) -> list[Out]:
    """`run(items)`; when it raises, each half on its own, down to single items, so that an
    error fails only the items that cause it (`failed` answers for each of those)."""
    try:
        return run(items)
    except Exception as err:
        if len(items) == 1:
            logger.exception("an image failed on its own")
            return [failed(items[0], err)]
        half = len(items) // 2
        return contained(run, items[:half], failed) + contained(run, items[half:], failed)


def _failed_row(row: RequestRow, err: Exception) -> dict[str, Any]:
    """The image row of a row the pipeline failed on: a 500 for its request alone."""
    return {"image": None, "error": f"the server failed on an image of this request "
            f"({type(err).__name__}); the error is in the server's log", "status": 500,
            "seed": row.seed, "width": row.width, "height": row.height, "batch_size": 0}


def _unchecked(row: dict[str, Any], err: Exception) -> Verdict:
    return Verdict(failed=True)


def _answer(row: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """What goes back to the ingress; a flagged image's bytes never leave the replica, nor do
    those of an image the checker failed on (a 500 for it)."""
    error, status = row["error"], row.get("status", 400)
    if verdict.failed:
        error, status = "the safety check failed on this image; it is withheld", 500
    return {
        "image": None if verdict.flagged or error else row["image"],
        "error": error,
        "status": status,  # of an error: 400 the row's input, 500 the server failed on it
        "param": _input_named(error),  # the request field an error is about, when one is
        "seed": row["seed"],
        "width": row["width"],
        "height": row["height"],
        "batch_size": row["batch_size"],
        "flagged": verdict.flagged,
        "safety_score": verdict.score,
        "steps": row.get("steps"),
        "seconds": row.get("gen_seconds"),
    }


def _input_named(error: str | None) -> str | None:
    """The input image an error of the generator is about (its messages name it first)."""
    return next((name for name in ("image", "mask") if (error or "").startswith(f"`{name}`")),
                None)


def _cancelled(row: Any) -> dict[str, Any]:
    """The answer for a job row whose job no longer wants it (cancelled, or taken over)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return {"image": None, "error": None, "cancelled": True, "status": 200, "param": None,
            "seed": get("seed"), "width": get("width"), "height": get("height"),
            "batch_size": 0, "flagged": False, "safety_score": None}


def _refused(row: RequestRow, param: str, message: str) -> dict[str, Any]:
    """The answer for a row refused before generation: a 400 that names `param`."""
    return {
        "image": None, "error": message, "status": 400, "param": param, "seed": row.seed,
        "width": row.width, "height": row.height, "batch_size": 0,
        "flagged": False, "safety_score": None,
    }


def _safety_checker(spec: ServeSpec) -> Any:
    from darkroom.evals.scorers.safety import load_safety_checker

    safety = spec.safety
    return load_safety_checker(safety.checker, threshold=safety.threshold, weights=safety.weights)


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _cost(key: tuple) -> float:
    """Work per image of a settings group: steps x pixels (cheapest first)."""
    _, steps, width, height = key[:4]
    return steps * width * height


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
