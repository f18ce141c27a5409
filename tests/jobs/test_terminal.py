"""What `darkroom run configs/jobs/smoke.yaml` prints, as a person sees it: a progress display
in a terminal (a real pseudo-terminal), plain lines at most every 5 s under a pipe, and
`--verbose` bringing the per-file lines and Ray's logs back."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"^[^:\s][^:]*: \d+(/\d+)? \w+")  # "<phase>: 8/16 rows (50%), ..."


def _job(tmp_path: Path, name: str) -> Path:
    spec = yaml.safe_load((ROOT / "configs/jobs/smoke.yaml").read_text())
    spec["prompts"]["file"] = str(ROOT / "configs/jobs" / spec["prompts"]["file"])
    spec["output"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _in_a_terminal(command: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int, str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower,
                               env={**env, "COLUMNS": "120", "LINES": "40"}, cwd=cwd,
                               close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_smoke_job_shows_progress_in_a_terminal_and_sparse_lines_under_a_pipe(ray_session,
                                                                              tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "darkroom", "run"]

    code, shown = _in_a_terminal([*command, str(_job(tmp_path, "tty"))], env, tmp_path, 400)
    assert code == 0, shown[-3000:]
    assert "ETA" in shown and "%" in shown, shown[-3000:]  # the live bars
    assert shown.count("\n") <= 40, shown
    assert "wrote" not in shown and "core_worker" not in shown

    process = subprocess.Popen([*command, str(_job(tmp_path, "pipe"))], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic(), line.rstrip("\n")) for line in process.stdout]
    assert process.wait(timeout=30) == 0, "\n".join(text for _, text in lines)[-3000:]
    text = "\n".join(line for _, line in lines)
    assert "\x1b[" not in text and "\r" not in text, text  # no bars off a terminal
    progress = [(t, line) for t, line in lines if PROGRESS.match(line)]
    assert progress, text
    by_phase: dict[str, list[float]] = {}
    for t, line in progress:
        by_phase.setdefault(line.split(":", 1)[0], []).append(t)
    for phase, times in by_phase.items():
        assert all(b - a >= 4.5 for a, b in zip(times, times[1:], strict=False)), (phase, text)
    assert len(lines) <= 40 and "core_worker" not in text, text

    verbose = subprocess.run([*command, str(_job(tmp_path, "verbose")), "--verbose"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=400)
    loud = verbose.stdout + verbose.stderr
    assert verbose.returncode == 0, loud[-3000:]
    assert "wrote" in loud and len(loud.splitlines()) > len(lines), loud[-3000:]
