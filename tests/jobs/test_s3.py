"""Jobs on object storage: prompts and output in an S3 bucket (a local moto server on 127.0.0.1),
the workers writing, a rerun that generates nothing, evaluation and compare reading from S3 and
MLflow keeping its artifacts where its tracking server says (the same bucket)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from darkroom.cli import main
from darkroom.jobs import lease
from darkroom.jobs.jobfile import validate
from darkroom.jobs.lease import JobBusy, JobLease
from darkroom.jobs.output import FILE_SCHEMA
from darkroom.jobs.pipeline import run_job
from darkroom.jobs.plan import expand, row_id_of
from darkroom.platform.data import layout, storage


def s3_job(tmp_path: Path, bucket: str, name: str, prompts: int = 6, **changes) -> dict:
    """A two-run job whose prompts and output are both in the bucket."""
    lines = [json.dumps({"id": f"p{i}", "text": f"a lighthouse number {i}"})
             for i in range(prompts)]
    storage.write_text(storage.location(f"{bucket}/inputs/prompts.jsonl"),
                       "\n".join(lines) + "\n")
    job = {
        "name": name, "output": f"{bucket}/out",
        "prompts": {"file": f"{bucket}/inputs/prompts.jsonl", "images_per_prompt": 2,
                    "columns": {"prompt": "text", "id": "id"}},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim", "euler"], "steps": [2]},
        "generation": {"width": 64, "height": 64, "batch_size": 2},
        "compute": {"actors": {"min": 1, "max": 2}, "checkpoint_rows": 4},
        "runtime": {"device": "cpu"},
    }
    job.update(changes)
    return job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, s3, helpers):
    """An MLflow tracking server whose artifact root is in the bucket."""
    import urllib.request

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", f"{s3}/mlartifacts"],
        env=env, stdout=(tmp_path / "mlflow.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
        except OSError:
            return server.poll() is not None
        return True

    helpers.wait_for(up, 120, "the MLflow server")
    assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


@pytest.mark.ray
@pytest.mark.slow
def test_a_job_on_s3_rerun_eval_and_compare(ray_session, tmp_path, s3, mlflow_server, capsys,
                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder
    data = s3_job(tmp_path, s3, "on-s3")
    spec = validate(data, base=tmp_path)
    runs = expand(spec)

    result = run_job(spec)

    assert result.generated == 2 * 6 * 2 and result.failed == 0
    job_dir = storage.location(f"{s3}/out/on-s3")
    assert result.job_dir == job_dir and not (tmp_path / "out").exists()
    assert layout.run_dirs(job_dir) == sorted(job_dir / r.run_id for r in runs)
    image_bytes = 0
    for run in runs:
        files = layout.parquet_files(job_dir / run.run_id / layout.IMAGES)
        rows = [r for f in files for r in layout.read_file(f, ["row_id", "image"]).to_pylist()]
        assert sorted(r["row_id"] for r in rows) == sorted(
            row_id_of(run.run_id, f"p{i}", s) for i in range(6) for s in range(2))
        image_bytes += sum(len(r["image"]) for r in rows)
        assert layout.read_json(job_dir / run.run_id / layout.TIMING)["images"] == 12
    # The driver heard a few bytes per written file and no pixels: each result row is
    # FILE_SCHEMA (no binary column), and all of them together are a sliver of the images.
    assert all(field.type != "binary" for field in FILE_SCHEMA)
    assert 0 < result.driver_bytes * 20 < image_bytes

    # a rerun generates nothing; with an eval: section it evaluates from S3 into MLflow
    scored = run_job(validate(data, base=tmp_path, overrides=[
        "eval={metrics: [safety]}", f"tracking={{experiment: s3-test, uri: '{mlflow_server}'}}"]))
    assert scored.generated == 0
    assert sorted(m["images"] for m in scored.metrics) == [12, 12]
    assert all("nsfw_rate" in m["metrics"] for m in scored.metrics)

    # `darkroom eval` of the URI, and `darkroom compare`, whose contact sheets come from S3
    capsys.readouterr()
    assert main(["eval", str(job_dir), "--metrics", "safety", "--tracking-uri", mlflow_server,
                 "--experiment", "s3-test", "--json"]) == 0
    out = capsys.readouterr().out
    assert sorted(r["images"] for r in json.loads(out[out.index("[\n"):])) == [12, 12]
    assert storage.exists(job_dir / runs[0].run_id / layout.SCORES / "scores.parquet")
    report = tmp_path / "report.html"
    assert main(["compare", "--experiment", "s3-test", "--tracking-uri", mlflow_server,
                 "--html", str(report)]) == 0
    assert "data:image/png;base64" in report.read_text()
    # against a baseline: per-image scores read back from the bucket, paired (same prompts and
    # seeds in both runs)
    assert main(["compare", "--experiment", "s3-test", "--tracking-uri", mlflow_server,
                 "--baseline", runs[0].run_id]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\S+\s+nsfw_rate\s.*\spaired$", out, re.M), out
    assert "unpaired" not in out and "cannot be read" not in out, out
    artifacts = storage.location(f"{s3}/mlartifacts")
    sheets = [e for e in _walk(artifacts) if e.name == "contact_sheet.png"]
    assert len(sheets) >= 2  # one per run, in the bucket the tracking server named


def _walk(loc):
    for entry in storage.list_dir(loc):
        if entry.is_dir:
            yield from _walk(entry.loc)
        else:
            yield entry.loc


def test_the_lease_on_s3(s3, monkeypatch):
    monkeypatch.setattr(lease, "SETTLE_S", 0.1)
    job_dir = storage.location(f"{s3}/out/leased")
    with JobLease(job_dir):
        holder = json.loads(storage.read_text(job_dir / lease.LEASE))
        assert holder["pid"] == os.getpid()
        with pytest.raises(JobBusy, match=f"pid {os.getpid()}"):
            JobLease(job_dir).__enter__()
    assert not storage.exists(job_dir / lease.LEASE)
    # another host's holder is judged by its heartbeat alone
    storage.write_text(job_dir / lease.LEASE, json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(JobBusy, match="on elsewhere"):
        JobLease(job_dir).__enter__()
    monkeypatch.setattr(lease, "STALE_S", 0.0)  # its heartbeat stopped long ago
    with JobLease(job_dir):
        assert json.loads(storage.read_text(job_dir / lease.LEASE))["pid"] == os.getpid()
