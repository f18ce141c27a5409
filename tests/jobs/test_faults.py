"""Real faults: an actor process killed mid-run, a driver killed mid-run, a corrupt output file;
each with the output in a local folder and in an S3 bucket (a local moto server)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import job_dir_of, run_job
from darkroom.jobs.plan import expand, row_id_of
from darkroom.platform.data import layout, storage

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TOTAL = 16 * 4  # fault_job: 16 prompts x 4 images, one run


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    """Where the job writes: a local folder, or a bucket."""
    if request.param == "s3":
        return f"{request.getfixturevalue('s3')}/out"
    return str(tmp_path / "out")


def written_rows(job_dir) -> list[dict]:
    """Every row of every committed image file, as written (a row written twice counts twice)."""
    rows = []
    for run_dir in layout.run_dirs(job_dir):
        for path in layout.parquet_files(run_dir / layout.IMAGES):
            rows += layout.read_file(path, ["row_id", "created_at"]).to_pylist()
    return rows


def expected_ids(spec) -> set[str]:
    (run,) = expand(spec)
    return {row_id_of(run.run_id, f"{p:05d}", s) for p in range(16) for s in range(4)}


def test_killed_actor_is_restarted_and_every_row_is_written_once(ray_session, tmp_path, helpers,
                                                                  output):
    spec = validate(helpers.fault_job(tmp_path, "actor-kill", output=output), base=tmp_path)
    job_dir = job_dir_of(spec)
    seen: dict = {}
    others = {p.pid for p in helpers.generator_actors()}  # pools of other tests, if any

    def kill_the_actor_mid_run() -> None:
        try:
            helpers.wait_for(lambda: helpers.finished_files(job_dir), 180, "a first checkpoint")
            (victim,) = [p for p in helpers.generator_actors() if p.pid not in others]
            seen["killed_at"] = dt.datetime.now(dt.UTC)
            victim.send_signal(signal.SIGKILL)
            seen["victim"] = victim.pid
            seen["restarted"] = helpers.wait_for(
                lambda: [p.pid for p in helpers.generator_actors()
                         if p.pid not in others and p.pid != victim.pid],
                180, "Ray to restart the actor")
        except BaseException as err:  # reported by the test thread below
            seen["error"] = err

    killer = threading.Thread(target=kill_the_actor_mid_run, daemon=True)
    killer.start()
    result = run_job(spec)
    killer.join(timeout=60)

    assert "error" not in seen, seen.get("error")
    assert seen["restarted"] and seen["victim"] not in seen["restarted"]
    rows = written_rows(job_dir)
    counts = Counter(r["row_id"] for r in rows)
    assert set(counts) == expected_ids(spec) and set(counts.values()) == {1}
    assert result.generated == TOTAL
    # work went on after the kill: the restarted actor made the rest
    assert sum(r["created_at"] > seen["killed_at"] for r in rows) > 0


def test_killed_driver_rerun_generates_only_missing_rows(ray_session, tmp_path, helpers, output):
    data = helpers.fault_job(tmp_path, "driver-kill", output=output)
    job_dir = storage.location(output) / "driver-kill"
    others = {p.pid for p in helpers.generator_actors()}
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            helpers.wait_for(lambda: helpers.finished_files(job_dir) or driver.poll() is not None,
                             300, "the driver's first checkpoint")
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
    before = Counter(r["row_id"] for r in written_rows(job_dir))
    assert 0 < len(before) < TOTAL and set(before.values()) == {1}
    files_before = {f: storage.read_bytes(f) for f in helpers.finished_files(job_dir)}
    # the dead driver's actors go with it
    helpers.wait_for(lambda: not [p for p in helpers.generator_actors() if p.pid not in others],
                     120, "the old actors to exit")

    spec = validate(data, base=tmp_path)
    result = run_job(spec)

    assert result.generated == TOTAL - len(before)
    after = Counter(r["row_id"] for r in written_rows(job_dir))
    assert set(after) == expected_ids(spec) and set(after.values()) == {1}
    assert all(storage.read_bytes(f) == data for f, data in files_before.items())  # kept
    # what the killed driver's actors left half done is gone: every data file is committed
    for run_dir in layout.run_dirs(job_dir):
        assert layout.listing(run_dir / layout.IMAGES)[1] == []

    # A corrupt file (a disk error, a bad copy) is moved aside and its rows made again.
    victim = sorted(files_before)[0]
    victim_count = layout.read_file(victim, ["row_id"]).num_rows
    storage.write_bytes(victim, files_before[victim][: len(files_before[victim]) // 2])
    messages: list[str] = []
    healed = run_job(spec, log=messages.append)
    assert healed.generated == victim_count
    assert any("unreadable" in m and victim.name in m for m in messages)
    final = Counter(r["row_id"] for r in written_rows(job_dir))
    assert set(final) == expected_ids(spec) and set(final.values()) == {1}
