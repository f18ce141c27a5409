"""`batch_size: auto`: the largest batch that fits, found by halving on out-of-memory, remembered.

Remembered per device, model, runtime options and image size in a small JSON file in the cache
folder, so the next actor on the same kind of GPU starts at a batch that fits.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from darkroom.platform.models.names import cache_root


class BatchSizeMemory:
    """Largest batch known to fit, by key; survives the process."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_root() / "batch_sizes.json"

    def _read(self) -> dict[str, int]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # no file yet, or a torn one: start afresh
            return {}

    def get(self, key: str) -> int | None:
        """The batch size remembered for `key`, or None when there is none."""
        return self._read().get(key)

    def remember(self, key: str, size: int) -> None:
        """Record `size` for `key`, replacing the file atomically; no write when unchanged."""
        known = self._read()
        if known.get(key) == size:
            return
        known[key] = size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=".batch_sizes-", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f, indent=1, sort_keys=True)
        os.replace(staging, self.path)  # readers see the old file or the new one, never half


def chunks(items: list, size: int | None) -> list[list]:
    """`items` in consecutive lists of at most `size`; all in one list when size is None or 0."""
    if not size or size >= len(items):
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]
