"""Waiting on an event with a timeout, keeping cancellation.

On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives as its timeout fires
(fixed in 3.12, gh-86296); a polling loop built on it then never stops. `asyncio.timeout` keeps it.
"""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` was set within `seconds`."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
        return True
    except TimeoutError:
        return False
