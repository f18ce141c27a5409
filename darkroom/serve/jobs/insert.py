"""A document to insert along with a swap: shared by the stores (its own module so that
`store.open_store` may import the Redis store, which needs it, without a cycle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Insert:
    """A document to insert with a swap, unless its key exists (then it is left as it is)."""

    kind: str
    key: str
    doc: dict[str, Any]
    due: float | None = None
    expires: float | None = None
