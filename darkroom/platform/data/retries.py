"""Retries of a store's transient errors: a remote operation is tried again, with backoff, while
the store answers errors about the moment, not the file (503 SlowDown, a dropped connection, an
internal error), for `$DARKROOM_STORE_RETRY_S` seconds (60 by default); then `StoreUnavailable`.
Local paths are not retried: their errors are about the file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class StoreUnavailable(ConnectionError):
    """A store kept answering errors that are not about the file (503 SlowDown, a dropped
    connection) for longer than the retry budget; the operation changed nothing."""


RETRY_ENV = "DARKROOM_STORE_RETRY_S"
RETRY_S = 60.0
# What a store says when retrying cannot help: the request itself is wrong (pyarrow's S3 error
# names, HTTP 4xx but 408 and 429), or the bytes are (a page checksum read straight from it).
PERMANENT = re.compile(
    r"ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|NO_SUCH_BUCKET|NO_SUCH_KEY|"
    r"RESOURCE_NOT_FOUND|HTTP status 4(?!08|29)\d\d|page integrity|CRC checksum")
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                  PermissionError, StoreUnavailable)


def transient(err: BaseException) -> bool:
    """Whether a store's error may pass by itself (a slow-down, a dropped connection)."""
    if not isinstance(err, OSError) or isinstance(err, _NOT_TRANSIENT):
        return False
    return not PERMANENT.search(str(err))


def retry_seconds() -> float:
    """How long an operation on a remote location is retried ($DARKROOM_STORE_RETRY_S)."""
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV) or RETRY_S))
    except ValueError:
        return RETRY_S


def retrying(loc: Any, what: str, attempt: Callable[[], T], budget: float | None = None) -> T:
    """`attempt()`, tried again with backoff while a remote store answers transient errors."""
    if isinstance(loc, Path):
        return attempt()
    budget = retry_seconds() if budget is None else budget
    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            return attempt()
        except OSError as err:
            if not transient(err):
                raise
            if time.monotonic() + delay > deadline:
                last = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
                raise StoreUnavailable(
                    f"{what} {loc}: the store kept failing for {budget:.0f} s with errors that "
                    f"are not about the file (last: {last}); run again when it answers "
                    f"(${RETRY_ENV} sets how long to retry)") from None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
