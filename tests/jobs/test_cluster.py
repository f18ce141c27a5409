"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`) with
token auth, running a tiny job sent with `darkroom submit`. The test stops only what it started.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from darkroom.cli import main
from darkroom.platform import layout

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# outside Ray's worker port range (10002-19999) and the defaults of any other local Ray
GCS_PORT, DASHBOARD_PORT = 26379, 28265
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
BIN = Path(sys.executable).parent


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group: everything it spawns can be stopped."""
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", *args, "--disable-usage-stats", "--block"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"`ray start {' '.join(args)}` did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (Ray drains and stops its processes), then SIGKILL what is left of the group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)  # a head node can take much longer to drain; not needed here
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_leftovers(root: Path, timeout: float = 20.0) -> list[int]:
    """Ray starts some of its processes in sessions of their own, out of reach of the node's
    process group; they all name the cluster's unique temp folder, so find them by it. Returns
    the pids still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="drc-", dir="/tmp"))  # short: Ray's socket paths
    token = root / "token"
    token.write_text(secrets.token_hex(16))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    nodes = []
    try:
        nodes.append(start_node(
            ["--head", f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}",
             "--ray-client-server-port=26380", "--dashboard-agent-listen-port=26381",
             "--include-dashboard=true", "--num-cpus=1", f"--temp-dir={root / 'ray'}"],
            env, root / "head.log"))
        nodes.append(start_node(
            [f"--address=127.0.0.1:{GCS_PORT}", "--dashboard-agent-listen-port=26382",
             "--num-cpus=1"], env, root / "worker.log"))
        yield root, token
    finally:
        for node in reversed(nodes):
            stop(node)
        survivors = stop_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not survivors, f"processes of the test cluster survived: {survivors}"


def test_submit_to_a_two_node_cluster(cluster, tmp_path, monkeypatch, capsys):
    root, token = cluster
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(6)))
    # one actor per node: the head and the worker each have one CPU, the pool needs two
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "cluster",
        "prompts": {"file": "prompts.txt", "images_per_prompt": 2},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim"], "steps": [2]},
        "generation": {"width": 32, "height": 32, "batch_size": 2},
        "compute": {"actors": {"min": 2, "max": 2}, "cpus_per_actor": 1},
        "runtime": {"device": "cpu"},
    }))
    output = root / "out"
    command = [sys.executable, "-m", "darkroom", "submit", str(tmp_path / "job.yaml"),
               "--address", DASHBOARD,
               "--env", f"DARKROOM_CACHE={os.environ['DARKROOM_CACHE']}", f"output={output}"]
    # the client has the token but not RAY_AUTH_MODE: darkroom must send it by itself
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    job_id = re.search(r"submitted (darkroom-cluster-\w+)", done.stdout).group(1)
    assert f"darkroom logs {job_id} --follow --address {DASHBOARD}" in done.stdout

    # follow it to the end (what `submit --wait` does), then ask for its status (HTTP only)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert main(["logs", job_id, "--follow", "--address", DASHBOARD]) == 0
    followed = capsys.readouterr().out
    assert "12 image(s) generated" in followed and f"{job_id}: SUCCEEDED" in followed

    (run_dir,) = layout.run_dirs(output / "cluster")
    ids = Counter(layout.read_table(run_dir / layout.IMAGES, columns=["row_id"])
                  .column("row_id").to_pylist())
    assert len(ids) == 12 and set(ids.values()) == {1}

    assert main(["status", job_id, "--address", DASHBOARD]) == 0
    assert f"{job_id}: SUCCEEDED" in capsys.readouterr().out
    assert main(["logs", job_id, "--address", DASHBOARD]) == 0
    assert "12 image(s) generated" in capsys.readouterr().out

    assert main(["status", "darkroom-no-such-job", "--address", DASHBOARD]) == 2
    assert "no job `darkroom-no-such-job`" in capsys.readouterr().err

    # without the token the cluster refuses, and darkroom says what to do
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    assert main(["status", job_id, "--address", DASHBOARD]) == 2
    assert "auth_token" in capsys.readouterr().err


def test_submit_refuses_a_relative_output(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "rel", "output": "outputs", "prompts": {"list": ["a"]},
        "models": [{"model": "tiny:sd"}]}))
    assert main(["submit", str(tmp_path / "job.yaml"), "--address", "http://127.0.0.1:9"]) == 2
    assert "absolute path" in capsys.readouterr().err
