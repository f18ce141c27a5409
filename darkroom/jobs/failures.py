"""What ended a pass over Ray: an error of the store or a lost lease, reported as itself, or work
lost with a node or an actor, told apart from a failure of the work.

Ray repairs what it can: a crashed actor is restarted (`compute.max_restarts`) and the calls it
was running are retried (`compute.max_task_retries`). When it cannot (the node went away with the
actor and no node had room to restart it before the retries ran out) Ray Data ends the pass with
one of Ray's errors below. The driver then goes on with the nodes that remain (`jobs.pipeline`):
what the lost calls committed counts, what they left half written is removed, and the missing
rows are made in a new pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from darkroom.jobs.lease import LeaseLost
from darkroom.platform.data.storage import StoreUnavailable

LOST_PASSES = 3  # passes of one model that may end with lost work before the job fails


def cause(err: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first error of `kinds` in what Ray wraps (`.cause`) and in Python's chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        found = todo.pop(0)
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        inner = getattr(found, "cause", None)
        inner = inner if isinstance(inner, BaseException) else None
        if isinstance(found, kinds) and inner is None:
            return found
        todo += [inner, found.__cause__, found.__context__]
    return None


def reported_plainly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a store that stopped answering, or a lease taken over, end `fn` as itself, in one
    line: Ray wraps what a worker raised in its own error, the worker's traceback in its text."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            plain = cause(err, (StoreUnavailable, LeaseLost))
            if plain is None or plain is err:
                raise
            raise plain from None

    return wrapper


def lost_work(err: BaseException) -> str | None:
    """What was lost, when `err` says that a node or an actor went away (not that an actor's
    constructor failed); None for any other error."""
    import ray.exceptions as errors

    kinds = (errors.RayActorError, errors.NodeDiedError, errors.WorkerCrashedError,
             errors.ObjectLostError)
    found = cause(err, kinds)
    if found is None or getattr(found, "actor_init_failed", False):
        return None
    text = str(found).strip().splitlines()[0] if str(found).strip() else ""
    return f"{type(found).__name__}: {text[:200]}"


def alive_nodes() -> dict[str, str]:
    """The cluster's live nodes: node id -> address."""
    import ray

    return {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in ray.nodes()
            if node.get("Alive")}


def lost_nodes(before: dict[str, str]) -> list[str]:
    """The addresses of the nodes of `before` that are gone now."""
    now: dict[str, Any] = alive_nodes()
    return [address for node, address in before.items() if node not in now]
