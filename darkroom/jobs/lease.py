"""One writer per job folder: a lease file that a second `darkroom run` respects.

The lease (`OUTPUT/<job>/.lease`) names its holder: host, pid and that process's start time, the
invocation's start, a random token. Who may take it over:

- on the holder's own host, exactly when its process is gone: no such pid, a zombie (killed, not
  yet reaped), or another process under a reused pid. A live holder keeps its lease however long
  it stalls (stopped, swapping);
- from another host, when its heartbeat (the lease's modification time, renewed every
  `heartbeat_seconds()`) is older than `stale_seconds()` (60 s; `$DARKROOM_LEASE_STALE_S`);
- a lease that is not a lease Darkroom wrote (unparsable) is judged by its age, and said so.

A holder whose lease was taken over anyway (it stalled past the stale interval, and an
invocation on another host took the folder) stops: its heartbeat finds another token and marks
the lease lost (`JobLease.check`), and its writers check the lease before each file
(`check_held`), so it writes no file after it can know.

On a local folder taking the lease and giving it back happen under an exclusive lock on
`.lease.lock` beside it: of several invocations, one at a time creates it (O_EXCL), judges it,
renames a stale one aside and creates its own, so of two takers exactly one holds it. (The
heartbeat takes no lock: a holder stopped while it held one would keep every taker out.)

On an object store there is neither a lock nor rename. The rule there: write the lease, wait
`SETTLE_S`, read it back, and hold it only if it still carries our token (the store is strongly
consistent: of several writers, the last one's lease is what everyone reads). Two invocations
that start within about `SETTLE_S` of each other may, rarely, both proceed. That wastes work but
breaks nothing that readers see: a row written twice is the same request with the same seed, and
every reader keeps one copy (`platform.layout`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

LEASE = ".lease"
LOCK = ".lease.lock"
STALE_ENV = "DARKROOM_LEASE_STALE_S"
HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 2.0
LOCK_WAIT_S = 10.0


class JobBusy(RuntimeError):
    """Another live invocation holds the job folder: exit code 1, naming the holder."""


class LeaseLost(RuntimeError):
    """Another invocation took this one's lease over (it stalled too long): it stops, exit 1."""


def stale_seconds() -> float:
    """How old another host's heartbeat may be before its lease is taken over."""
    try:
        return max(0.0, float(os.environ.get(STALE_ENV) or STALE_S))
    except ValueError:
        return STALE_S


def heartbeat_seconds() -> float:
    """How often a holder renews its lease: a sixth of the stale interval, at most HEARTBEAT_S."""
    return max(0.05, min(HEARTBEAT_S, stale_seconds() / 6))


class JobLease:
    """Hold the job folder's lease for a `with` block; a heartbeat thread keeps it fresh."""

    def __init__(self, job_dir: str | Location) -> None:
        self.path = storage.location(job_dir) / LEASE
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid()),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "token": uuid.uuid4().hex}
        self.token: str = self.holder["token"]
        self.lost: str | None = None  # why the lease is no longer ours, once it is not
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> JobLease:
        storage.makedirs(self.path.parent)
        if isinstance(self.path, Path):
            self._take_local(self.path)
        else:
            self._take_remote()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            if isinstance(self.path, Path):
                with _locked(self.path):
                    if (_read(self.path) or {}).get("token") == self.token:
                        self.path.unlink()
                for stale in self.path.parent.glob(f"{LEASE}.stale-*"):
                    stale.unlink(missing_ok=True)
            elif (_read(self.path) or {}).get("token") == self.token:
                storage.delete(self.path)
        except OSError:  # a store that does not answer: the lease expires by itself
            pass

    def check(self) -> None:
        """Raise LeaseLost when the heartbeat found the lease taken over."""
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def _take_local(self, path: Path) -> None:
        with _locked(path):
            if _create(path, self.holder):
                return
            holder = _read(path)
            if holder is not None and not _stale(path, holder):
                raise JobBusy(_busy(path, holder))
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(f"{LEASE}.stale-{uuid.uuid4().hex}"))
            if not _create(path, self.holder):
                raise JobBusy(f"could not take the lease {path}: it keeps changing hands")

    def _take_remote(self) -> None:
        for _ in range(3):  # a stale lease taken over by someone else meanwhile: try again
            if not storage.exists(self.path):
                storage.write_text(self.path, json.dumps(self.holder))
                time.sleep(SETTLE_S)  # let a writer that raced us finish, then see who won
                if (_read(self.path) or {}).get("token") == self.token:
                    return
            holder = _read(self.path)
            if holder is not None and not _stale(self.path, holder):
                raise JobBusy(_busy(self.path, holder))
            storage.delete(self.path)
        raise JobBusy(f"could not take the lease {self.path}: it keeps changing hands")

    def _heartbeat(self) -> None:
        while not self._stop.wait(heartbeat_seconds()):
            try:
                holder = self._renew()
            except OSError:  # a store that did not answer this time: try at the next beat
                continue
            if holder is not True:
                self.lost = _lost(self.path, holder)
                return

    def _renew(self) -> dict[str, Any] | None | bool:
        """True when the lease is still ours (its heartbeat renewed), else what holds it.

        No lock: a holder stopped while it held one would keep every taker out. Should a taker
        replace the lease between the read and the renewal, the renewal freshens the taker's
        lease, and the next beat finds it lost."""
        holder = _read(self.path)
        if holder is None or holder.get("token") != self.token:
            return holder
        if isinstance(self.path, Path):
            os.utime(self.path)
        else:
            storage.write_text(self.path, json.dumps(self.holder))  # a new modification time
        return True


def check_held(job_dir: str | Location, token: str) -> None:
    """Raise LeaseLost unless the job folder's lease still carries `token` (a writer's check
    before it writes a file)."""
    path = storage.location(job_dir) / LEASE
    holder = _read(path)
    if holder is None or holder.get("token") != token:
        raise LeaseLost(_lost(path, holder))


def _lost(path: Location, holder: dict[str, Any] | None) -> str:
    now = "nobody holds it now" if holder is None else (
        f"it is held by pid {holder.get('pid')} on {holder.get('host')} since "
        f"{holder.get('started')}" if holder else "it now holds something unreadable")
    return (f"this invocation lost its lease on {path.parent} ({now}): it did not renew it for "
            f"more than {stale_seconds():.0f} s (stopped or stalled) and another `darkroom run` "
            "took the folder over. It stops here; the files it wrote are kept, and the "
            "invocation that holds the folder makes the rest")


def _busy(path: Location, holder: dict[str, Any]) -> str:
    if not holder:
        return (f"the lease {path} cannot be read as a Darkroom lease (not written by "
                "Darkroom, or torn while it was written); it is taken over once it is "
                f"{stale_seconds():.0f} s old. If no `darkroom run` writes {path.parent}, "
                "delete the lease")
    if holder.get("host") == socket.gethostname():
        until = "Its process is alive on this host: it keeps the lease until it ends"
    else:
        until = (f"If that process is gone, its lease expires {stale_seconds():.0f} s after its "
                 "last heartbeat")
    return (f"{path.parent} is being written by another `darkroom run` (pid {holder.get('pid')} "
            f"on {holder.get('host')}, since {holder.get('started')}); wait for it to finish, "
            f"or use another `name`. {until}")


@contextlib.contextmanager
def _locked(lease: Path) -> Iterator[None]:
    """An exclusive lock on `.lease.lock` beside the lease (released when its file closes)."""
    fd = os.open(lease.with_name(LOCK), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # a holder stopped while it held the lock
                    raise JobBusy(f"the lock {lease.with_name(LOCK)} has been held for "
                                  f"{LOCK_WAIT_S:.0f} s by a process that does not let go "
                                  "(stopped?)") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def _create(path: Path, holder: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(holder, handle)
    return True


def _read(path: Location) -> dict[str, Any] | None:
    """The holder a lease names; {} when it is not a lease Darkroom wrote, None when none."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:  # half written, or not written by Darkroom: judged by its age
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(path: Location, holder: dict[str, Any]) -> bool:
    found = storage.info(path)
    if found is None:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"], holder.get("pid_start"))
    return found.mtime is not None and time.time() - found.mtime > stale_seconds()


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process `pid` still runs: a zombie is dead, and so is a process that got the
    pid later (its start time differs from the holder's)."""
    state, start = _proc_stat(pid)
    if state is None:  # no /proc here: ask the kernel, which counts zombies as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: alive
            return True
        return True
    if state in ("", "Z", "X"):
        return False
    return started is None or start == started


def _process_start(pid: int) -> str | None:
    return _proc_stat(pid)[1]


def _proc_stat(pid: int) -> tuple[str | None, str | None]:
    """(state, start time in clock ticks since boot) of a process from Linux's /proc; ("",
    None) when there is no such process, (None, None) without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ("", None) if Path("/proc/self/stat").exists() else (None, None)
    except OSError:
        return None, None
    fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return fields[0], fields[19]
