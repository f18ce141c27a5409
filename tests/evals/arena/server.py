"""`darkroom arena` as a real server process on 127.0.0.1 (any free port), for the tests that
kill it or drive it from a browser."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LINK = re.compile(r"^\s+(rater|viewer) (\S+): (http://\S+)/login\?token=(\w+)$")


@dataclass
class Server:
    """A running `darkroom arena`: its process, base URL and everyone's token."""

    process: subprocess.Popen
    base: str
    tokens: dict[str, str]
    output: list[str]

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        """SIGINT (Ctrl-C), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start(job: Path, store: str, *flags: str, timeout: float = 60.0) -> Server:
    """Start the command and wait for it to say it is serving."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "darkroom", "arena", str(job), "--store", store, "--port", "0",
         *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    output, tokens, base = [], {}, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line.rstrip())
        found = LINK.match(line.rstrip())
        if found:
            tokens[found.group(2)] = found.group(4)
            base = found.group(3)
        if line.startswith("serving at"):  # keep reading, so the pipe never fills up
            threading.Thread(target=lambda: output.extend(line.rstrip() for line in
                                                          process.stdout), daemon=True).start()
            return Server(process, base, tokens, output)
    process.kill()
    raise AssertionError("`darkroom arena` did not start:\n" + "\n".join(output))
