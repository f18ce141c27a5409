"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`) with
token auth, running a tiny job sent with `darkroom submit`. The test stops only what it started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from darkroom.cli import main
from darkroom.platform.data import layout

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the `ray_cluster` fixture's dashboard (tests/conftest.py)
DASHBOARD = f"http://127.0.0.1:{int(os.environ.get('DARKROOM_TEST_PORT_BASE', '26379')) + 1886}"


@pytest.fixture
def cluster(ray_cluster):
    """A head node and a worker node, one CPU each."""
    return ray_cluster(workers=1)


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


def test_submit_entrypoint_checks_the_clusters_python(tmp_path):
    """The entrypoint refuses clearly when the cluster's `python` lacks darkroom, and uses
    $DARKROOM_PYTHON when given (here it runs darkroom, which refuses a bad job.yaml: exit 2)."""
    from darkroom.jobs.submit import ENTRYPOINT

    (tmp_path / "job.yaml").write_text("name: [not a name]\n")
    bare = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/sh", "-c", ENTRYPOINT], cwd=tmp_path, env=bare,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot import darkroom" in done.stderr
    assert "DARKROOM_PYTHON" in done.stderr
    done = subprocess.run(["/bin/sh", "-c", ENTRYPOINT], cwd=tmp_path, timeout=120,
                          env={**bare, "DARKROOM_PYTHON": sys.executable},
                          capture_output=True, text=True)
    assert done.returncode == 2 and "name" in done.stderr, done.stderr


def test_run_and_eval_never_join_a_running_cluster_by_accident(ray_cluster, tmp_path):
    """A cluster that `ray start` left running on this machine, and no RAY_ADDRESS: `darkroom run`
    (with its eval) starts a private Ray and leaves the cluster alone. Ray's own lines say so,
    shown with `--verbose` and hidden without it."""
    root, token = ray_cluster()
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "alone", "output": str(tmp_path / "out"),
        "prompts": {"list": ["a", "b"]}, "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim"], "steps": [2]},
        "generation": {"width": 32, "height": 32}, "runtime": {"device": "cpu"},
        "eval": {"metrics": ["safety"]},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml"),
                           "--verbose"], env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Started a local Ray instance" in output
    assert "Connecting to existing Ray cluster" not in output
    quiet = subprocess.run([sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, (quiet.stdout + quiet.stderr)[-3000:]
    assert "Started a local Ray instance" not in quiet.stdout + quiet.stderr
    import httpx

    auth = {"Authorization": f"Bearer {token.read_text().strip()}"}
    jobs = httpx.get(f"{DASHBOARD}/api/jobs/", headers=auth, timeout=30)
    assert jobs.status_code == 200, jobs.text
    assert jobs.json() == []  # not even a driver of ours on the cluster
