"""An MLflow that cannot be reached: `darkroom eval` says so before the expensive part, and metrics
computed before the store went away are kept and logged later without computing them again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eval_command(job_dir: Path, uri: str) -> list[str]:
    """`--verbose`: Ray's "Started a local Ray instance" line marks where scoring begins."""
    return [sys.executable, "-m", "darkroom", "eval", str(job_dir), "--metrics", "safety",
            "--tracking-uri", uri, "--json", "--verbose"]


def quiet_env() -> dict[str, str]:
    """No RAY_ADDRESS (a private Ray), and MLflow requests that fail at once when refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3")
    return env


def test_an_unreachable_store_is_named_before_any_scoring(sd_job, tmp_path):
    job_dir = tmp_path / "smoke"
    shutil.copytree(sd_job, job_dir)
    for scores in job_dir.glob("*/scores"):  # what other tests' evaluations left
        shutil.rmtree(scores)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = subprocess.run(eval_command(job_dir, uri), capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if not k.startswith("RAY_")})
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot reach the MLflow tracking store {uri}" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries
    assert not list(job_dir.glob("*/scores/*.parquet"))  # nothing was computed


def start_server(store: str, port: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", store],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            return server
        except httpx.TransportError:
            assert server.poll() is None and time.monotonic() < deadline, "no mlflow server"
            time.sleep(0.5)


def test_metrics_computed_before_the_store_went_away_are_logged_later(sd_job, tmp_path):
    job_dir = tmp_path / "smoke"
    shutil.copytree(sd_job, job_dir)
    port = free_port()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port, tmp_path)
    try:
        evaluation = subprocess.Popen(eval_command(job_dir, uri), env=quiet_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in evaluation.stdout:  # the store answered the check; scoring has begun
            lines.append(line)
            if "Started a local Ray instance" in line:
                os.killpg(server.pid, signal.SIGSTOP)  # the store stops answering
                break
        lines += evaluation.stdout.readlines()
        assert evaluation.wait(timeout=300) == 1, "".join(lines)[-3000:]
        pending = json.loads((job_dir / "eval_pending.json").read_text())
        assert {r["run_id"] for r in pending["results"]} == {"run-ddim-1", "run-ddim-2",
                                                             "run-euler-2"}
        assert all("nsfw_rate" in r["metrics"] for r in pending["results"]), pending["results"]

        os.killpg(server.pid, signal.SIGCONT)  # the store is back
        again = subprocess.run(eval_command(job_dir, uri), env=quiet_env(), capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "logging the metrics an earlier evaluation computed" in again.stderr
        assert "Started a local Ray instance" not in again.stdout + again.stderr  # no rescoring
        assert not (job_dir / "eval_pending.json").exists()
        results = json.loads(again.stdout[again.stdout.index("[\n"):])
        saved = {r["run_id"]: r["metrics"] for r in pending["results"]}
        assert {r["run_id"]: r["metrics"] for r in results} == saved
        from mlflow.tracking import MlflowClient

        logged = MlflowClient(uri).get_run(results[0]["mlflow_run_id"]).data.metrics
        assert logged["nsfw_rate"] == saved[results[0]["run_id"]]["nsfw_rate"]
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        os.killpg(server.pid, signal.SIGTERM)


def test_a_store_killed_mid_way_fails_the_evaluation_in_seconds(sd_job, tmp_path):
    """With MLflow's own retry settings (7 retries, about four minutes of backoff for a refused
    connection), a server killed while the images are scored fails `darkroom eval` in seconds,
    with exit code 1, the metrics kept and the way to log them named."""
    job_dir = tmp_path / "smoke"
    shutil.copytree(sd_job, job_dir)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(f"sqlite:///{tmp_path}/mlflow.db", port, tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_HTTP_REQUEST_"))}
    try:
        evaluation = subprocess.Popen(eval_command(job_dir, uri), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in evaluation.stdout:  # the store answered the check; scoring has begun
            lines.append(line)
            if "Started a local Ray instance" in line:
                os.killpg(server.pid, signal.SIGKILL)  # the store is gone for good
                killed = time.monotonic()
                break
        rest, _ = evaluation.communicate(timeout=600)
        output = "".join(lines) + rest
        assert evaluation.returncode == 1, output[-3000:]
        assert time.monotonic() - killed < 120, output[-3000:]  # scoring included; not minutes
        assert "MLflow (" in output and "failed while the metrics were logged" in output
        assert f"kept in {job_dir / 'eval_pending.json'}" in output
        assert "Traceback" not in output
        pending = json.loads((job_dir / "eval_pending.json").read_text())
        assert all("nsfw_rate" in r["metrics"] for r in pending["results"])
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
