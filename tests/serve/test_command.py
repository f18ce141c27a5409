"""`darkroom serve` as a real process: it never joins a cluster by accident, says where it really
answers, and every way of stopping it (Ctrl-C, `kill`, systemd's SIGTERM to the whole process
group) ends it within 20 s."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# the `ray_cluster` fixture's dashboard (tests/conftest.py)
DASHBOARD = f"http://127.0.0.1:{int(os.environ.get('DARKROOM_TEST_PORT_BASE', '26379')) + 1886}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(tmp_path: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`darkroom serve` in a session of its own, without RAY_ADDRESS; returns it and its URL."""
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(
        "name: alone\nmodel: {model: 'tiny:dit'}\ndefaults: {steps: 2}\n"
        "resources: {num_cpus: 0.5}\nruntime: {device: cpu}\nsafety: {on: false}\n"
        f"http: {{port: {port}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    process = subprocess.Popen([sys.executable, "-m", "darkroom", "serve", str(serve_file)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while not any("serving at" in line for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("darkroom serve did not start:\n" + "".join(lines[-40:]))
        lines.append(process.stdout.readline())
    url = re.search(r"serving at (\S+)/v1", "".join(lines)).group(1)
    return process, url


SIGNALS = {
    "sigterm-to-the-group": lambda p: os.killpg(p.pid, signal.SIGTERM),  # systemd's default
    "sigint-to-the-group": lambda p: os.killpg(p.pid, signal.SIGINT),  # Ctrl-C
    "sigterm-to-the-process": lambda p: p.send_signal(signal.SIGTERM),  # `kill PID`
}


@pytest.mark.parametrize("how", list(SIGNALS))
def test_serve_starts_its_own_ray_beside_a_running_cluster_and_stops_in_time(
        ray_cluster, tmp_path, how):
    root, token = ray_cluster()
    port = free_port()
    process, url = start_serve(tmp_path, port)
    try:
        assert url == f"http://127.0.0.1:{port}"  # where it really listens
        response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "two"},
                              timeout=60)
        assert response.status_code == 200, response.text
        # the cluster that `ray start` left running was not joined: it has no Serve app
        auth = {"Authorization": f"Bearer {token.read_text().strip()}"}
        apps = httpx.get(f"{DASHBOARD}/api/serve/applications/", headers=auth, timeout=30)
        assert apps.status_code == 200, apps.text
        assert "alone" not in (apps.json().get("applications") or {})
        started = time.monotonic()
        SIGNALS[how](process)
        process.wait(timeout=30)
        assert time.monotonic() - started < 20, f"{how}: took {time.monotonic() - started:.1f}s"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_busy_port_is_named(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        (tmp_path / "serve.yaml").write_text(
            f"model: {{model: 'tiny:dit'}}\nruntime: {{device: cpu}}\nhttp: {{port: {port}}}\n")
        done = subprocess.run([sys.executable, "-m", "darkroom", "serve",
                               str(tmp_path / "serve.yaml")], capture_output=True, text=True,
                              timeout=120, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("RAY_")})
    assert done.returncode == 2, done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr
    assert "Traceback" not in done.stderr
