"""`darkroom serve` as a real process: it never joins a cluster by accident, says where it really
answers, and every way of stopping it (Ctrl-C, `kill`, systemd's SIGTERM to the whole process
group) ends it within 20 s."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# the test clusters' dashboard (tests/conftest.py)
PORT_BASE = int(os.environ.get("DARKROOM_TEST_PORT_BASE", "26379"))
DASHBOARD = f"http://127.0.0.1:{PORT_BASE + 1886}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY = ("name: alone\nmodel: {model: 'tiny:dit'}\ndefaults: {steps: 2}\n"
        "resources: {num_cpus: 0.5}\nruntime: {device: cpu}\nsafety: {on: false}\n")


def start_serve(tmp_path: Path, port: int, spec: str = TINY) -> tuple[subprocess.Popen, str]:
    """`darkroom serve` in a session of its own, without RAY_ADDRESS; returns it and its URL."""
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(f"{spec}http: {{port: {port}}}\n")
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
        running_cluster, tmp_path, how):
    root, token = running_cluster
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


# -- draining ----------------------------------------------------------------------------------

# Batches of 40-step images keep requests in flight for a while; 16 images fit (8 on the model
# replica, 8 waiting), and 24 clients keep it overloaded, so there are also 503s of overload.
BUSY = ("name: busy\nmodel: {model: 'tiny:dit'}\ndefaults: {steps: 40}\n"
        "batching: {max_batch_size: 4, batch_wait_timeout_s: 0.01}\n"
        "max_ongoing_requests: 8\nmax_queued_requests: 8\nretry_after_s: 2\n"
        "resources: {num_cpus: 0.5}\nruntime: {device: cpu}\nsafety: {on: false}\n")


def load_then_sigterm(process: subprocess.Popen, url: str, clients: int = 24) -> dict:
    """Closed-loop clients for 3 s, then SIGTERM to the process (`kill PID`); the clients go on
    until the process has exited. Returns the signal's and the exit's times and every outcome:
    (sent, done, status or the transport error's name, response or None)."""
    outcomes: list[tuple[float, float, int | str, httpx.Response | None]] = []
    finish = time.monotonic() + 120

    async def client(http: httpx.AsyncClient, seed: int) -> None:
        while time.monotonic() < finish:
            sent = time.monotonic()
            try:
                response = await http.post(url, json={"prompt": "three", "seed": seed})
                outcomes.append((sent, time.monotonic(), response.status_code, response))
            except httpx.TransportError as err:  # refused, or reset as the server went
                outcomes.append((sent, time.monotonic(), type(err).__name__, None))
                await asyncio.sleep(0.1)

    async def run() -> dict:
        nonlocal finish
        async with httpx.AsyncClient(timeout=60) as http:
            tasks = [asyncio.create_task(client(http, i)) for i in range(clients)]
            await asyncio.sleep(3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
            exited = time.monotonic()
            finish = exited + 1  # a moment of requests to the stopped server
            await asyncio.gather(*tasks)
        return {"signalled": signalled, "exited": exited}

    times = asyncio.run(run())
    return {**times, "outcomes": outcomes, "log": process.stdout.read()}


def assert_openai_503(response: httpx.Response, codes: set[str]) -> str:
    assert response.headers["content-type"] == "application/json", response.text
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] in codes, error
    return error["code"]


@pytest.mark.parametrize("drain_s", [10, 0])
def test_sigterm_drains_requests_in_flight_and_refuses_new_ones(tmp_path, drain_s):
    """SIGTERM under overload: requests in flight are answered (200 when the drain has time,
    503 when it has none), new ones get an OpenAI-shaped 503 with Retry-After, never a 500 or
    plain text, and the process is gone within 20 s."""
    process, url = start_serve(tmp_path, free_port(), f"{BUSY}drain_timeout_s: {drain_s}\n")
    try:
        run = load_then_sigterm(process, f"{url}/v1/images/generations")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    signalled, outcomes = run["signalled"], run["outcomes"]
    took = run["exited"] - signalled
    print(f"\ndrain_timeout_s {drain_s}: exited {took:.1f} s after SIGTERM; "
          + " | ".join(line for line in run["log"].splitlines() if "drain" in line))
    assert process.returncode == 0 and took < 20, run["log"][-2000:]
    statuses = {status for _, _, status, _ in outcomes}
    assert statuses <= {200, 503, "ConnectError", "ReadError", "RemoteProtocolError"}, statuses
    codes = {"overloaded", "shutting_down"}
    seen = [assert_openai_503(r, codes) for _, _, status, r in outcomes if status == 503]
    assert "overloaded" in seen and "shutting_down" in seen  # under load, and then draining
    # sent before the signal: answered, never cut off (times relative to the signal)
    cut = [(round(sent - signalled, 2), round(done - signalled, 2), status)
           for sent, done, status, _ in outcomes
           if sent < signalled and not isinstance(status, int)]
    assert not cut, cut
    # the stop reaches the replica within milliseconds; a second allows for two busy cores
    late = [status for sent, _, status, _ in outcomes if sent > signalled + 1]
    assert late and 200 not in late, late
    in_flight = [(status, r and r.json().get("error", {}).get("code"))
                 for sent, done, status, r in outcomes if sent < signalled < done]
    assert in_flight and all(status in (200, 503) for status, _ in in_flight), in_flight
    if drain_s:  # the drain waited for them: they were answered as usual
        assert (200, None) in in_flight and "drained 1 of 1" in run["log"], in_flight
        assert "answered 503" not in run["log"]
    else:  # no time to wait: the drain answered them, before the replica stopped
        assert (503, "shutting_down") in in_flight and "answered 503" in run["log"], in_flight


# -- joining a cluster -------------------------------------------------------------------------


def test_a_token_cluster_without_the_token_is_a_one_line_error(running_cluster, tmp_path):
    """RAY_ADDRESS names a cluster with token authentication, and this machine has no token (no
    RAY_AUTH_TOKEN, no RAY_AUTH_TOKEN_PATH, no ~/.ray/auth_token): exit 2 and say so."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "serve.yaml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS=f"127.0.0.1:{PORT_BASE}", HOME=str(home))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "darkroom", "serve", str(tmp_path / "serve.yaml")],
                          capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    print(f"\nexit {done.returncode} after {took:.1f} s: {errors}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert errors == [
        f"error: the Ray cluster at RAY_ADDRESS=127.0.0.1:{PORT_BASE} requires an auth token, "
        "and none "
        "was found here: copy the head node's ~/.ray/auth_token to this machine, or set "
        "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"], done.stderr
    assert took < 30  # Ray alone keeps retrying a refused token for 20 s


def test_an_address_where_nothing_answers_is_a_one_line_error(tmp_path):
    """Ray would wait minutes for a GCS that never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "serve.yaml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS=f"127.0.0.1:{port}")
    done = subprocess.run([sys.executable, "-m", "darkroom", "serve", str(tmp_path / "serve.yaml")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"error: nothing answers at RAY_ADDRESS=127.0.0.1:{port} (Connection refused)" in (
        done.stderr)
