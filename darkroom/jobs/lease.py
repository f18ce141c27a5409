"""One writer per job folder: a lease file that a second `darkroom run` respects.

The lease (`OUTPUT/<job>/.lease`) names its holder: host, pid, start time, a random token. A
holder that died cannot keep it: on its own host a lease whose pid is gone is stale, and on any
host a lease whose heartbeat (its modification time, renewed every `HEARTBEAT_S`) is older than
`STALE_S` is stale, and taken over.

On a local folder the lease is created with O_EXCL, so of two invocations started at once exactly
one gets it, and a stale lease is renamed aside (only one taker's rename succeeds).

On an object store there is neither O_EXCL nor rename. The rule there: write the lease, wait
`SETTLE_S`, read it back, and hold it only if it still carries our token (the store is strongly
consistent: of several writers, the last one's lease is what everyone reads). Two invocations
that start within about `SETTLE_S` of each other may, rarely, both proceed. That wastes work but
breaks nothing that readers see: a row written twice is the same request with the same seed, and
every reader keeps one copy (`platform.layout`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

LEASE = ".lease"
HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 2.0


class JobBusy(RuntimeError):
    """Another live invocation holds the job folder: exit code 1, naming the holder."""


class JobLease:
    """Hold the job folder's lease for a `with` block; a heartbeat thread keeps it fresh."""

    def __init__(self, job_dir: str | Location) -> None:
        self.path = storage.location(job_dir) / LEASE
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> JobLease:
        storage.makedirs(self.path.parent)
        for _ in range(3):  # a stale lease taken over by someone else meanwhile: try again
            if self._create():
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return self
            holder = _read(self.path)
            if holder is not None and not _stale(self.path, holder):
                raise JobBusy(
                    f"{self.path.parent} is being written by another `darkroom run` (pid "
                    f"{holder.get('pid')} on {holder.get('host')}, since "
                    f"{holder.get('started')}); wait for it to finish, or use another `name`. "
                    f"If that process is gone, its lease expires within {STALE_S:.0f} s"
                )
            self._clear_stale()
        raise JobBusy(f"could not take the lease {self.path}: it keeps changing hands")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.holder["token"]:
            storage.delete(self.path)
        if isinstance(self.path, Path):
            for stale in self.path.parent.glob(f"{LEASE}.stale-*"):
                stale.unlink(missing_ok=True)

    def _create(self) -> bool:
        if isinstance(self.path, Path):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                json.dump(self.holder, handle)
            return True
        if storage.exists(self.path):
            return False
        storage.write_text(self.path, json.dumps(self.holder))
        time.sleep(SETTLE_S)  # let a writer that raced us finish its write, then see who won
        return (_read(self.path) or {}).get("token") == self.holder["token"]

    def _clear_stale(self) -> None:
        if isinstance(self.path, Path):
            try:  # only one taker's rename succeeds
                os.replace(self.path, self.path.with_name(f"{LEASE}.stale-{uuid.uuid4().hex}"))
            except FileNotFoundError:
                pass
        else:
            storage.delete(self.path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if isinstance(self.path, Path):
                    os.utime(self.path)
                elif (_read(self.path) or {}).get("token") == self.holder["token"]:
                    storage.write_text(self.path, json.dumps(self.holder))  # a new mtime
                else:
                    return  # taken over after a stall: nothing to keep fresh
            except FileNotFoundError:  # taken over after a stall: nothing to keep fresh
                return
            except OSError:  # a store that did not answer this time: try at the next beat
                continue


def _read(path: Location) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder that died while creating it: judged by its age


def _stale(path: Location, holder: dict[str, Any]) -> bool:
    found = storage.info(path)
    if found is None:
        return True
    if found.mtime is not None and time.time() - found.mtime > STALE_S:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
