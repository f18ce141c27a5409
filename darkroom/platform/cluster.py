"""Joining Ray: a private local instance unless RAY_ADDRESS names a cluster, with its token.

Without RAY_ADDRESS every command starts its own local Ray (`address="local"`): a cluster that
`ray start` left running on this machine is never joined by accident. Ray's INFO logs, Ray
Data's progress and the lines of Ray's core known to be harmless stay off the console
(`quiet_ray`; its files keep them) unless the command runs with `--verbose`. With RAY_ADDRESS the
cluster's auth token is sent when there is one. Ray 2.60's `ray start` turns on token
authentication by default; the token is read the way Ray itself reads it: $RAY_AUTH_TOKEN, the
file named by $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (copy it from the head node).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkroom.platform import console
from darkroom.platform.errors import UserError

TOKEN_HELP = (
    "if the cluster uses token authentication (Ray's default for `ray start`), copy the head "
    "node's ~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
)
# Seconds joining RAY_ADDRESS waits for a TCP connection, then the number of Ray's attempts
# (one a second; Ray's default of 20 is spent in full also when the cluster has refused the
# token). RAY_gcs_server_port_wait_time_s, when set, overrides the attempts.
CONNECT_SECONDS = 5
# What Ray's C++ core prints on the driver's stderr that is known not to be a failure.
HARMLESS = (
    # Every Ray Data actor pool with restarts gets it (ray-project/ray#57733): the pool's
    # constructor arguments live as long as its dataset, so its restarts do work
    b"has constructor arguments in the object store and max_restarts > 0",
)
# Ray's own log messages that only echo what `quiet_ray` asked for.
HARMLESS_LOGS = ("Progress bars disabled",)


def read_token() -> str | None:
    """The Ray auth token, from the same places Ray looks (in Ray's order)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidate = Path(path) if path else Path.home() / ".ray" / "auth_token"
    if candidate.is_file():
        return candidate.read_text().strip() or None
    if path:
        raise UserError(f"RAY_AUTH_TOKEN_PATH names {path}, which is not a readable file")
    return None


def enable_token_auth() -> None:
    """Before joining a cluster with `ray.init(address=...)`: use the token when there is one.

    Ray only turns token mode on by itself for a cluster it finds on this machine, never for an
    explicit address, and it reads the mode when it is imported.
    """
    if os.environ.get("RAY_AUTH_MODE") or not read_token():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # already imported: have Ray read its configuration again
        from ray._raylet import Config

        Config.initialize("")


def connect_ray(log: Callable[[str], None] = print, **init_options: Any) -> bool:
    """Join RAY_ADDRESS if set, else start a private local Ray; True when joined a cluster.

    An already initialised Ray (a test session, a Ray job's driver) is used as it is.
    """
    address = os.environ.get("RAY_ADDRESS")
    if not address and "ray" not in sys.modules:
        # Ray's own default for a new local instance (token auth), chosen explicitly so Ray does
        # not warn about it; Ray reads the mode when it is imported
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return bool(address)
    quiet_ray(console.current().verbose)
    if not address:
        # "local": never join a cluster that `ray start` left running on this machine
        ray.init(address="local", include_dashboard=False, **init_options)
        return False
    enable_token_auth()
    log(f"joining Ray at {address}")
    _check_reachable(address)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(CONNECT_SECONDS))
    try:
        ray.init(address=address, **init_options)
    except (ConnectionError, RuntimeError, PermissionError) as err:
        raise UserError(_join_failure(address, err)) from err
    return True


def _check_reachable(address: str) -> None:
    """A GCS address (HOST:PORT) must take a TCP connection: Ray would wait minutes for one that
    never answers. Other forms (auto, ray://...) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise UserError(f"nothing answers at RAY_ADDRESS={address} ({err.strerror or err}); is "
                        "the cluster up, and is this its GCS address (port 6379 by default)?"
                        ) from err


def _join_failure(address: str, err: BaseException) -> str:
    """One line: the cluster refused the token (Ray says so in the error's causes), or else."""
    causes = []
    cause: BaseException | None = err
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__
    if any("InvalidAuthToken" in text or "Unauthenticated" in text for text in causes):
        problem = ("refused the auth token found here" if read_token()
                   else "requires an auth token, and none was found here")
        return (f"the Ray cluster at RAY_ADDRESS={address} {problem}: copy the head node's "
                "~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    return (f"cannot join the Ray cluster at RAY_ADDRESS={address} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); is it up, "
            f"and is this its GCS address (port 6379 by default)? {TOKEN_HELP}")


def quiet_ray(verbose: bool = False) -> None:
    """Before `ray.init`: Ray's and Ray Data's console logs at WARNING and above (their log
    files keep everything), Ray Data's progress bars off (the console shows its own), and the
    HARMLESS lines of Ray's core dropped from stderr. `verbose` leaves Ray as it is."""
    if verbose:
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ != "SessionFileHandler":  # the console, not the file
                handler.setLevel(max(handler.level, logging.WARNING))
                handler.addFilter(_not_harmless)
    StderrFilter.install(HARMLESS)


def _not_harmless(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(HARMLESS_LOGS)


class StderrFilter:
    """File descriptor 2 through a pipe that drops lines holding any of `patterns`: Ray's core
    writes to the descriptor itself, past Python's `sys.stderr`. One per process; undone at
    exit."""

    installed: StderrFilter | None = None

    def __init__(self, patterns: tuple[bytes, ...]) -> None:
        self.patterns = patterns
        self.saved = os.dup(2)
        read, write = os.pipe()
        sys.stderr.flush()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._pump, args=(read,), daemon=True,
                                       name="darkroom-stderr-filter")
        self.thread.start()

    @classmethod
    def install(cls, patterns: tuple[bytes, ...]) -> None:
        """Filter stderr from now until the process exits (once)."""
        if cls.installed is None:
            cls.installed = cls(patterns)
            atexit.register(cls.installed.close)

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                # a line of Ray's core is one write (shorter than the pipe's atomic size)
                kept = [line for line in chunk.splitlines(keepends=True)
                        if not any(p in line for p in self.patterns)]
                if kept:
                    os.write(self.saved, b"".join(kept))

    def close(self) -> None:
        """Put stderr back and let the pump write what it still holds."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)  # the pipe's last writer: its reader ends
        self.thread.join(timeout=2)
