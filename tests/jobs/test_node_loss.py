"""A worker node lost mid-job on a real three-node cluster (`ray start`: a head that runs only the
driver, as in deploy/rayjob.yaml, and two one-CPU workers): its raylet is killed while its actor
works. The job goes on with the node that remains, writes every row once, and says what it lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import psutil
import pytest

from darkroom.jobs.jobfile import validate
from darkroom.jobs.plan import expand, row_id_of
from darkroom.platform.data import layout

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GCS_PORT = int(os.environ.get("DARKROOM_TEST_PORT_BASE", "26379"))  # tests/conftest.py
PROMPTS = 20


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def working_node(nodes: list[psutil.Process]) -> psutil.Process | None:
    """The `ray start` of a worker node whose generator actor is past its constructor."""
    for node in nodes:
        for child in node.children(recursive=True):
            line = command_line(child)
            if "GenerateAndWrite" in line and "__init__" not in line:
                return node
    return None


def test_a_worker_node_lost_mid_job_the_job_goes_on_and_writes_every_row_once(
        ray_cluster, tmp_path, helpers):
    root, token = ray_cluster(workers=2, head_cpus=0)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(PROMPTS)))
    job = {"name": "node-loss", "output": str(root / "out"),
           "prompts": {"file": "prompts.txt", "images_per_prompt": 2},
           "models": [{"model": "tiny:sd"}], "sweep": {"sampler": ["ddim"], "steps": [4]},
           "generation": {"width": 32, "height": 32, "batch_size": 2},
           "compute": {"actors": {"min": 2, "max": 2}, "checkpoint_rows": 2},
           "runtime": {"device": "cpu"}}
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    job_dir = root / "out" / "node-loss"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS=f"127.0.0.1:{GCS_PORT}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token))
    log = tmp_path / "driver.log"
    driver = subprocess.Popen([sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")],
                              env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        workers = [p for p in psutil.Process().children() if "--address=" in command_line(p)]
        assert len(workers) == 2
        victim = helpers.wait_for(
            lambda: driver.poll() is not None or (helpers.finished_files(job_dir)
                                                  and working_node(workers)),
            400, "a worker node's actor at work", interval=0.5)
        assert driver.poll() is None, log.read_text()[-3000:]
        raylets = [c for c in victim.children(recursive=True)
                   if command_line(c).split(" ")[0].endswith("/raylet")]
        assert len(raylets) == 1
        raylets[0].send_signal(signal.SIGKILL)  # the node is gone, its actor and objects with it
        assert driver.wait(timeout=500) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    out = log.read_text()
    assert "going on with the nodes that remain" in out
    assert "lost and redone:" in out and "1 node(s) left the cluster during the job" in out
    spec = validate(job, base=tmp_path)
    (run,) = expand(spec)
    counts = Counter(row for f in helpers.finished_files(job_dir)
                     for row in layout.read_file(f, ["row_id"]).column("row_id").to_pylist())
    assert set(counts) == {row_id_of(run.run_id, f"{p:05d}", s)
                           for p in range(PROMPTS) for s in range(2)}
    assert set(counts.values()) == {1}
    assert f"{PROMPTS * 2} image(s) generated" in out
