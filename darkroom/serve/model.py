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
from darkroom.serve.spec import ServeSpec

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

    async def generate(self, row: RequestRow | dict[str, Any]) -> dict[str, Any]:
        """One request row in, one answer out (see `_answer`)."""
        row = row if isinstance(row, RequestRow) else RequestRow.model_validate(row)
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
        async with self.adapters.held(row.adapters):
            self._batched.set_batch_wait_timeout_s(self._batch_wait_s())
            ticket = next(self._tickets)
            self._waiting.add(ticket)
            result: Any = PENDING
            try:
                # consume the whole stream, so no batch future is left unread
                async for item in self._batched((row, ticket, key)):
                    if not isinstance(item, str):
                        result = item
            finally:  # also when the caller went away before its batch started
                self._waiting.discard(ticket)
        if isinstance(result, GroupFailed):
            raise result.error
        return result

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
    async def _batched(self, items: list[tuple[RequestRow, int, tuple]]
                       ) -> AsyncIterator[list[Any]]:
        rows = [row for row, _, _ in items]
        tickets = [ticket for _, ticket, _ in items]
        groups: dict[tuple, list[int]] = {}
        for index, (_, _, key) in enumerate(items):
            groups.setdefault(key, []).append(index)
        order = sorted(groups, key=_cost)
        calls = {key: next(self._tickets) for key in order}
        for key in order:
            self._queued[calls[key]] = self._seconds_per_work * _cost(key) * len(groups[key])
        try:
            async for answers in self._run_groups(rows, tickets, groups, order, calls):
                yield answers
        finally:  # groups that never started (the batch was cancelled) are not ahead anymore
            for call in calls.values():
                self._queued.pop(call, None)

    async def _run_groups(self, rows: list[RequestRow], tickets: list[int],
                          groups: dict[tuple, list[int]], order: list[tuple],
                          calls: dict[tuple, int]) -> AsyncIterator[list[Any]]:
        """Each group through the pipeline in `order`, its callers answered when it is done."""
        loop = asyncio.get_running_loop()
        finished: set[int] = set()
        for key in order:
            members = groups[key]
            work = _cost(key) * len(members)
            try:
                made = await loop.run_in_executor(
                    self.pipeline, self._generate, [rows[i] for i in members], work,
                    [tickets[i] for i in members], calls[key],
                )
                answers = (self._check(made) if self.checker is None
                           else await loop.run_in_executor(self.safety, self._check, made))
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
        self, rows: list[RequestRow], work: float, tickets: list[int], call: int
    ) -> list[dict[str, Any]]:
        """On the pipeline thread: one group through the generator, timed for `_batch_wait_s`."""
        self._waiting.difference_update(tickets)
        self._queued.pop(call, None)
        started = time.monotonic()
        self._busy_until = started + self._seconds_per_work * work
        try:
            out = contained(self.generator.generate, rows, _failed_row)
        finally:
            self._busy_until = 0.0
        if any(row["error"] is None for row in out):  # rows refused up front cost no time
            self._seconds_per_work = (time.monotonic() - started) / max(work, 1)
        return out

    def _check(self, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """On the safety thread: score the group's images; flagged ones are withheld, and so
        is an image the checker fails on (that image's error)."""
        made = [i for i, row in enumerate(out) if row["error"] is None]
        verdicts: dict[int, Verdict] = {}
        if self.checker is not None and made:
            found = contained(self._verdicts, [out[i] for i in made], _unchecked)
            verdicts = dict(zip(made, found, strict=True))
        return [_answer(row, verdicts.get(i, Verdict())) for i, row in enumerate(out)]

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
    }


def _input_named(error: str | None) -> str | None:
    """The input image an error of the generator is about (its messages name it first)."""
    return next((name for name in ("image", "mask") if (error or "").startswith(f"`{name}`")),
                None)


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
