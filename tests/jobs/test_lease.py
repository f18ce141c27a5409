"""The job folder's lease under real faults: two processes racing to take over a stale lease, a
holder killed and left a zombie, a lease that is not one, and a driver stopped with SIGSTOP for
longer than the stale interval (on its own host it keeps the lease; taken over from another host
it stops)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from darkroom.jobs import lease as lease_module
from darkroom.jobs.lease import LEASE, JobBusy, JobLease
from darkroom.platform.data import layout

# Two racers forked from one clean process; a barrier starts each round's take-over in both at
# once, and a second one keeps a holder holding until the other has tried too.
RACE = r"""
import json, multiprocessing as mp, os, subprocess, sys, time
from pathlib import Path
from darkroom.jobs.lease import LEASE, JobBusy, JobLease

root, rounds = Path(sys.argv[1]), int(sys.argv[2])

def racer(barrier, results):
    for r in range(rounds):
        barrier.wait()
        lease = JobLease(root / str(r))
        try:
            lease.__enter__()
        except JobBusy:
            lease = None
        results.put((r, lease is not None))
        barrier.wait()
        if lease is not None:
            lease.__exit__(None, None, None)

dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                      capture_output=True, text=True, check=True)
old = time.time() - 3600
for r in range(rounds):
    folder = root / str(r)
    folder.mkdir(parents=True)
    # even rounds: a dead process of this host; odd rounds: another host's stopped heartbeat
    holder = ({"host": os.uname().nodename, "pid": int(dead.stdout), "token": "dead"}
              if r % 2 == 0 else {"host": "elsewhere", "pid": 1, "token": "stale"})
    (folder / LEASE).write_text(json.dumps(holder))
    os.utime(folder / LEASE, (old, old))
ctx = mp.get_context("fork")
barrier, results = ctx.Barrier(2), ctx.Queue()
racers = [ctx.Process(target=racer, args=(barrier, results)) for _ in range(2)]
for p in racers:
    p.start()
outcomes = [results.get(timeout=60) for _ in range(2 * rounds)]
for p in racers:
    p.join(timeout=30)
print(json.dumps(outcomes))
"""


def test_two_processes_taking_over_a_stale_lease_never_both_hold_it(tmp_path):
    rounds = 300
    done = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), str(rounds)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    holders: Counter = Counter()
    for round_, held in json.loads(done.stdout):
        holders[round_] += held
    both = [r for r in range(rounds) if holders[r] > 1]
    assert not both, f"both racers held the lease in {len(both)} of {rounds} rounds"
    assert all(holders[r] == 1 for r in range(rounds))


def test_a_killed_holder_left_a_zombie_is_dead(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lease = tmp_path / LEASE
        lease.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                     "started": "just now", "token": "killed"}))
        # alive: refused, though the heartbeat is fresh only for a moment more
        with pytest.raises(JobBusy, match=f"pid {holder.pid} .*alive on this host"):
            JobLease(tmp_path).__enter__()
        os.kill(holder.pid, signal.SIGKILL)  # and not reaped: a zombie until wait() below
        deadline = time.monotonic() + 10
        while Path(f"/proc/{holder.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the holder did not become a zombie"
            time.sleep(0.01)
        os.kill(holder.pid, 0)  # what the kernel says of a zombie: still there
        with JobLease(tmp_path):  # the rerun right after the kill takes it at once
            assert json.loads(lease.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_a_pid_reused_by_another_process_does_not_hold_the_lease(tmp_path):
    lease = tmp_path / LEASE
    # this test's own process stands for whoever got the pid: alive, but started at another time
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "pid_start": "1", "started": "long ago", "token": "old"}))
    with JobLease(tmp_path):
        assert json.loads(lease.read_text())["token"] != "old"


def test_a_lease_that_is_not_one_is_reported_as_such(tmp_path):
    # what an S3-compatible server stored for a PUT sent without credentials: the chunk framing
    lease = tmp_path / LEASE
    lease.write_bytes(b'8\r\n{"x": 1}\r\n0\r\nx-amz-checksum-crc64nvme:27oHrCl58Xo=\r\n\r\n')
    with pytest.raises(JobBusy) as refused:
        JobLease(tmp_path).__enter__()
    message = str(refused.value)
    assert "cannot be read as a Darkroom lease" in message and "delete the lease" in message
    assert "None" not in message
    old = time.time() - 3600
    os.utime(lease, (old, old))
    with JobLease(tmp_path):  # judged by its age
        assert json.loads(lease.read_text())["pid"] == os.getpid()


# -- a real driver, stopped ----------------------------------------------------------------------


def driver_env(stale_s: float, ray_address: str) -> dict:
    """A driver's environment: the test session's Ray (no start-up per driver), a short stale
    interval."""
    return {**os.environ, "RAY_ADDRESS": ray_address, lease_module.STALE_ENV: str(stale_s)}


def committed(job_dir: Path) -> set[Path]:
    return {f for run in layout.run_dirs(job_dir) for f in layout.parquet_files(run / "images")}


@pytest.mark.slow
def test_a_stopped_driver_keeps_its_lease_and_one_taken_over_stops(ray_session, tmp_path,
                                                                   helpers, monkeypatch):
    stale_s = 2.0
    env = driver_env(stale_s, ray_session.get_runtime_context().gcs_address)

    def stopped_driver(name: str) -> tuple[subprocess.Popen, list[str], Path]:
        helpers.fault_job(tmp_path, name, prompts=12)
        command = [sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")]
        job_dir = tmp_path / "out" / name
        log = tmp_path / f"{name}.log"
        driver = subprocess.Popen(command, env=env, stdout=log.open("w"),
                                  stderr=subprocess.STDOUT)
        helpers.wait_for(lambda: committed(job_dir) or driver.poll() is not None, 300,
                         "the driver's first file")
        assert driver.poll() is None, log.read_text()[-3000:]
        driver.send_signal(signal.SIGSTOP)
        time.sleep(stale_s * 2)  # its heartbeat is well past the stale interval now
        return driver, command, job_dir

    # 1. On its own host a stopped holder is alive: a second run is refused, the first goes on.
    first, command, job_dir = stopped_driver("stopped")
    try:
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and "alive on this host" in second.stderr
    assert first.wait(timeout=300) == 0, (tmp_path / "stopped.log").read_text()[-3000:]
    counts = Counter(r for f in committed(job_dir)
                     for r in layout.read_file(f, ["row_id"]).column("row_id").to_pylist())
    assert len(counts) == 12 * 4 and set(counts.values()) == {1}

    # 2. From another host the stopped holder's lease is stale and taken over; resumed, the
    #    holder finds it lost and stops, and writes no file after that.
    third, _, job_dir = stopped_driver("taken")
    try:
        monkeypatch.setattr(lease_module.socket, "gethostname", lambda: "another-host")
        monkeypatch.setenv(lease_module.STALE_ENV, str(stale_s))
        taker = JobLease(job_dir).__enter__()  # what that host's `darkroom run` does first
        before = committed(job_dir)
    finally:
        third.send_signal(signal.SIGCONT)
    try:
        assert third.wait(timeout=300) == 1
        out = (tmp_path / "taken.log").read_text()
        assert "lost its lease" in out and "another-host" in out, out[-3000:]
        assert "Traceback" not in out
        assert committed(job_dir) == before  # nothing written once the lease was taken
    finally:
        taker.__exit__(None, None, None)
