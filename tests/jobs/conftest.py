"""Helpers of the jobs tests: slow-enough jobs, watching an output folder, finding our actors,
and a local S3-compatible server (moto) for output on object storage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

from darkroom.platform.data import layout

# The S3 endpoint of this test session, in the standard environment before any Ray starts: Ray's
# workers (and drivers started as subprocesses) inherit it, as they would on a cluster. The server
# itself starts only when a test asks for it (`s3`). Tests never reach a real S3.
with socket.socket() as _probe:
    _probe.bind(("127.0.0.1", 0))
    S3_PORT = _probe.getsockname()[1]
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)

GENERATOR_TITLE = "MapBatches(GenerateAndWrite)"


def fault_job(tmp_path: Path, name: str, prompts: int = 16, **changes) -> dict:
    """A job slow enough on tiny models to be interrupted: many small checkpoints."""
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt {i}" for i in range(prompts)) + "\n")
    job = {
        "name": name,
        "output": str(tmp_path / "out"),
        "prompts": {"file": "prompts.txt", "images_per_prompt": 4},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim"], "steps": [8]},
        "generation": {"width": 64, "height": 64, "batch_size": 4},
        "compute": {"actors": {"min": 1, "max": 1}, "checkpoint_rows": 4,
                    "max_restarts": 2, "max_task_retries": 2},
        "runtime": {"device": "cpu"},
    }
    job.update(changes)
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    return job


def finished_files(job_dir: Path) -> list[Path]:
    return [f for run in layout.run_dirs(job_dir) for f in
            layout.parquet_files(run / layout.IMAGES)]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def generator_actors() -> list[psutil.Process]:
    """Generator actor processes of this test session's Ray (descendants of this process)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if GENERATOR_TITLE in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on 127.0.0.1 (the port in AWS_ENDPOINT_URL)."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(S3_PORT)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_for(lambda: _answers(os.environ["AWS_ENDPOINT_URL"]) or server.poll() is not None, 60,
             "the S3 server to start")
    assert server.poll() is None, log.read_text()[-2000:]
    yield os.environ["AWS_ENDPOINT_URL"]
    server.terminate()
    server.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=1).read()
    except OSError:
        return False
    return True


@pytest.fixture
def s3(s3_server) -> str:
    """A new, empty bucket on the test S3 server; returns its URI (s3://NAME)."""
    import boto3

    name = f"darkroom-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def helpers():
    """The helpers above, for test modules (importlib import mode has no conftest imports)."""
    import types

    return types.SimpleNamespace(fault_job=fault_job, finished_files=finished_files,
                                 wait_for=wait_for, generator_actors=generator_actors)
