"""Shared fixtures: one local Ray instance per test session, tiny models in a session cache."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Tiny pipelines are built once per session into this cache; Ray workers inherit it.
os.environ.setdefault("DARKROOM_CACHE", tempfile.mkdtemp(prefix="darkroom-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Ray Data makes its console log handler on first import and binds it to the sys.stderr of that
# moment; imported first inside a test that captures output, it would write to that test's closed
# capture stream ever after ("--- Logging error ---"). Import it here, under pytest's
# session-long capture.
import ray.data  # noqa: E402, F401

# Fixtures that start Ray or a real server: a test that uses one (at any depth) is marked `ray`,
# so `make test-fast` (-m "not ray and not slow") leaves it to `make test`.
SERVICE_FIXTURES = {"ray_session", "ray_cluster", "running_cluster", "s3", "mlflow_server"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs Ray or a server as `ray`."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance of the test session (4 logical CPUs on 2 cores, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"DARKROOM_CACHE": os.environ["DARKROOM_CACHE"]}})
    yield ray
    ray.shutdown()


# -- a real multi-process Ray cluster, started with `ray start` ----------------------------------

# outside Ray's worker port range (10002-19999) and the defaults of any other local Ray
# Outside Ray's worker port range (10002-19999). DARKROOM_TEST_PORT_BASE moves them, so two test
# sessions on one machine can each start a cluster.
PORT_BASE = int(os.environ.get("DARKROOM_TEST_PORT_BASE", "26379"))
GCS_PORT, DASHBOARD_PORT = PORT_BASE, PORT_BASE + 1886
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


@contextlib.contextmanager
def clusters():
    """A starter of real local clusters with `ray start` (head + `workers` worker nodes, one CPU
    each, `head_cpus` for the head, token auth, dashboard on DASHBOARD_PORT) that returns (temp
    root, token file). On exit every process of every cluster it started is stopped, and it
    fails if any survive."""
    started: list[tuple[Path, list[subprocess.Popen]]] = []

    def start(workers: int = 0, head_cpus: int = 1) -> tuple[Path, Path]:
        root = Path(tempfile.mkdtemp(prefix="drc-", dir="/tmp"))  # short: Ray's socket paths
        token = root / "token"
        token.write_text(secrets.token_hex(16))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        nodes: list[subprocess.Popen] = []
        started.append((root, nodes))
        nodes.append(start_node(
            ["--head", f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}",
             f"--ray-client-server-port={PORT_BASE + 1}",
             f"--dashboard-agent-listen-port={PORT_BASE + 2}",
             "--include-dashboard=true", f"--num-cpus={head_cpus}",
             f"--temp-dir={root / 'ray'}"],
            env, root / "head.log"))
        for i in range(workers):
            nodes.append(start_node(
                [f"--address=127.0.0.1:{GCS_PORT}",
                 f"--dashboard-agent-listen-port={PORT_BASE + 3 + i}",
                 "--num-cpus=1"], env, root / f"worker{i}.log"))
        return root, token

    try:
        yield start
    finally:
        for root, nodes in started:
            for node in reversed(nodes):
                stop(node)
            survivors = stop_leftovers(root)
            shutil.rmtree(root, ignore_errors=True)
            assert not survivors, f"processes of the test cluster survived: {survivors}"


@pytest.fixture
def ray_cluster():
    """`clusters()` for one test: call it to start a cluster, stopped after the test."""
    with clusters() as start:
        yield start


@pytest.fixture(scope="module")
def running_cluster():
    """One head-only cluster left running for a whole module, for tests that only need one to
    be there (to show they do not join it, or join it without a token): (temp root, token)."""
    with clusters() as start:
        yield start()
