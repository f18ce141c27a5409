"""The LoRA adapters of one model replica, loaded through Serve's model multiplexing.

Serve keeps at most `max_adapters_per_replica` adapters loaded per replica and, when another is
asked for, drops the least recently used one, whether or not a batch for it is still queued in
the replica. So an adapter is pinned from the moment a request asks for it until that request
is answered: one that Serve drops while pinned stays loaded until its last request is done, and
is unloaded then (a replica may hold more than the cap meanwhile, never an adapter that nothing
waits for). Loads and unloads run on the pipeline's thread, in order with the pipeline calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from ray import serve

from darkroom.platform.models.spec import LoraSpec

logger = logging.getLogger("ray.serve")


class ServedAdapters:
    """Loads adapters when first asked for, keeps them while requests need them."""

    def __init__(self, generator: Any, loras: Sequence[LoraSpec], pipeline: Executor,
                 max_loaded: int) -> None:
        self.generator = generator
        self.loras = {lora.name: lora for lora in loras}
        self.pipeline = pipeline
        self.loads: dict[str, int] = {}  # name -> times its weights were read
        self._pins: collections.Counter[str] = collections.Counter()
        self._dropped: set[str] = set()  # dropped by Serve while pinned, still loaded

        async def load(name: str) -> Any:
            return await self._load(name)

        # requests for an adapter are routed to a replica that has it loaded
        self._multiplexed = serve.multiplexed(max_num_models_per_replica=max_loaded)(load)

    @contextlib.asynccontextmanager
    async def held(self, names: Sequence[str]) -> AsyncIterator[None]:
        """Each named adapter is loaded from entry until the block ends (none: the base)."""
        self._pins.update(names)
        try:
            for name in names:
                await self._multiplexed(name)
            yield
        finally:
            for name in names:
                self._pins[name] -= 1
                if not self._pins[name] and name in self._dropped:
                    self._dropped.discard(name)
                    self._unload_later(name)

    async def state(self) -> dict[str, Any]:
        """Which adapters the pipeline holds once the loads and unloads before it are done,
        and how often each was loaded (for tests)."""
        loaded = await asyncio.get_running_loop().run_in_executor(
            self.pipeline, lambda: sorted(self.generator.adapters.loaded))
        return {"loaded": loaded, "loads": dict(self.loads)}

    async def _load(self, name: str) -> Any:
        """Serve's loader: reads the weights on the pipeline thread, once per stay."""
        lora = self.loras.get(name)
        if lora is None:  # the ingress checks names first; a direct caller may not
            raise ValueError(f"unknown adapter `{name}`")
        if name in self._dropped:  # asked for again before its requests were done: still here
            self._dropped.discard(name)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pipeline, self.generator.adapters.load, lora)
            self.loads[name] = self.loads.get(name, 0) + 1
        return _LoadedAdapter(name, self._drop)

    async def _drop(self, name: str) -> None:
        """Serve dropped `name` from its cache: unload it now, or once its requests are done."""
        if self._pins[name]:
            self._dropped.add(name)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pipeline, self.generator.adapters.unload, name)

    def _unload_later(self, name: str) -> None:
        # not awaited: this runs as a request ends, possibly a cancelled one
        self.pipeline.submit(self.generator.adapters.unload, name).add_done_callback(_logged)


class _LoadedAdapter:
    """What Serve's multiplexing keeps per adapter; when Serve evicts it, it calls the `__del__`
    given here (an instance attribute: Python's own finaliser never runs it)."""

    def __init__(self, name: str, drop: Any) -> None:
        self.name = name

        async def dropped() -> None:
            await drop(name)

        self.__del__ = dropped


def _logged(done: Future) -> None:
    if done.exception() is not None:
        logger.error("unloading an adapter failed", exc_info=done.exception())
