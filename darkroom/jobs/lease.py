"""One writer per job folder: a lease file that a second `darkroom run` respects.

The lease (`OUTPUT/<job>/.lease`) names its holder: host, pid, start time. It is created with
O_EXCL, so of two invocations started at once exactly one gets it. A holder that died cannot keep
it: on its own host a lease whose pid is gone is stale, and on any host a lease whose heartbeat
(the file's mtime, touched every `HEARTBEAT_S`) is older than `STALE_S` is stale. A stale lease
is renamed aside (only one taker's rename succeeds) and taken over.
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

LEASE = ".lease"
HEARTBEAT_S = 10.0
STALE_S = 60.0


class JobBusy(RuntimeError):
    """Another live invocation holds the job folder: exit code 1, naming the holder."""


class JobLease:
    """Hold the job folder's lease for a `with` block; a heartbeat thread keeps it fresh."""

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / LEASE
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> JobLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lease renamed aside by someone else: try again
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
            try:  # stale: only one taker's rename succeeds
                os.replace(self.path, self.path.with_name(f"{LEASE}.stale-{uuid.uuid4().hex}"))
            except FileNotFoundError:
                pass
        raise JobBusy(f"could not take the lease {self.path}: it keeps changing hands")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.holder["token"]:
            self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f"{LEASE}.stale-*"):
            stale.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self.holder, handle)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # taken over after a stall: nothing to keep fresh
                return


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder that died while creating it: judged by its age


def _stale(path: Path, holder: dict[str, Any]) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > STALE_S:
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
