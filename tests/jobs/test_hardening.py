"""Faults a careless or hostile user brings: two runs of one job at once, a file corrupted in the
middle, a changed negative prompt, absurd input. Each test injects the real fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.lease import LEASE, JobBusy, JobLease
from darkroom.jobs.pipeline import run_job
from darkroom.platform.data import layout


def row_counts(job_dir: Path) -> Counter:
    """How many times each row id appears in the finished image files, as written."""
    counts: Counter = Counter()
    for run_dir in layout.run_dirs(job_dir):
        for path in layout.parquet_files(run_dir / layout.IMAGES):
            counts.update(pq.read_table(path, columns=["row_id"]).column("row_id").to_pylist())
    return counts


# -- one writer per job folder ------------------------------------------------------------------


def test_a_lease_of_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    lease = tmp_path / LEASE
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                 "started": "then", "token": "x"}))
    with JobLease(tmp_path):  # the holder is gone: taken over at once
        assert json.loads(lease.read_text())["pid"] == os.getpid()
        with pytest.raises(JobBusy, match=f"pid {os.getpid()}"):
            JobLease(tmp_path).__enter__()
    assert not lease.exists()
    # another host's holder: judged by its heartbeat alone
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(JobBusy, match="on elsewhere"):
        JobLease(tmp_path).__enter__()
    old = time.time() - 3600
    os.utime(lease, (old, old))
    with JobLease(tmp_path):
        pass


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_run_of_the_same_job_at_once_is_refused(tmp_path, helpers):
    helpers.fault_job(tmp_path, "twice", prompts=8)
    job_dir = tmp_path / "out" / "twice"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    command = [sys.executable, "-m", "darkroom", "run", str(tmp_path / "job.yaml")]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        helpers.wait_for(lambda: (job_dir / LEASE).exists() or first.poll() is not None, 120,
                         "the first run to take the job folder")
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        first_out = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_out[-3000:]
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    counts = row_counts(job_dir)
    assert len(counts) == 8 * 4 and set(counts.values()) == {1}
    assert not (job_dir / LEASE).exists()


# -- what resume and eval read ------------------------------------------------------------------


def small_job(tmp_path: Path, name: str, **changes) -> dict:
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"prompt {i}", "negative": f"blurry {i}"}) + "\n" for i in range(6)))
    job = {
        "name": name, "output": str(tmp_path / "out"),
        "prompts": {"file": "prompts.jsonl", "images_per_prompt": 2,
                    "columns": {"prompt": "prompt", "negative_prompt": "negative"}},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim"], "steps": [2]},
        "generation": {"width": 32, "height": 32, "batch_size": 4},
        "compute": {"checkpoint_rows": 4},
        "runtime": {"device": "cpu"},
    }
    job.update(changes)
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    return job


def corrupt_the_middle(path: Path) -> None:
    """Overwrite bytes inside the image column's data: header and footer stay valid."""
    data = bytearray(path.read_bytes())
    meta = pq.read_metadata(path)
    names = meta.schema.to_arrow_schema().names
    chunk = meta.row_group(0).column(names.index("image"))
    start = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))


@pytest.mark.ray
@pytest.mark.slow
def test_a_file_corrupted_in_the_middle_is_found_and_its_rows_made_again(
        ray_session, tmp_path, capsys):
    spec = validate(small_job(tmp_path, "corrupt"), base=tmp_path)
    job_dir = tmp_path / "out" / "corrupt"
    run_job(spec)
    (run_dir,) = layout.run_dirs(job_dir)
    victim = layout.parquet_files(run_dir / layout.IMAGES)[0]
    lost = pq.read_metadata(victim).num_rows
    corrupt_the_middle(victim)
    with pytest.raises(OSError):  # what a reader trusting the file would meet
        pq.read_table(victim, page_checksum_verification=True)

    messages: list[str] = []
    healed = run_job(spec, log=messages.append)
    assert healed.generated == lost
    assert any("unreadable" in m and victim.name in m for m in messages)
    counts = row_counts(job_dir)
    assert len(counts) == 12 and set(counts.values()) == {1}
    # and evaluation reads every row once
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["eval", str(job_dir), "--metrics", "safety", "--tracking-uri", uri,
                 "--json"]) == 0
    out = capsys.readouterr().out
    (result,) = json.loads(out[out.index("[\n"):])
    assert result["images"] == 12 and result["rows_unreadable"] == 0


@pytest.mark.ray
@pytest.mark.slow
def test_evaluation_counts_a_duplicated_row_once_and_leaves_a_bad_image_out(
        ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    spec = validate(small_job(tmp_path, "bad-image"), base=tmp_path)
    job_dir = tmp_path / "out" / "bad-image"
    run_job(spec)
    (run_dir,) = layout.run_dirs(job_dir)
    first = layout.parquet_files(run_dir / layout.IMAGES)[0]
    # a copy of a file under another name: every row in it now appears twice on disk
    (first.parent / ("z-copy-" + first.name)).write_bytes(first.read_bytes())
    # and one image that no decoder can read
    table = pq.read_table(first)
    images = table.column("image").to_pylist()
    images[0] = b"this is not a PNG"
    bad_row = table.column("row_id")[0].as_py()
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array(images, pa.binary()))
    pq.write_table(table, first)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["eval", str(job_dir), "--metrics", "safety", "--tracking-uri", uri, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (result,) = json.loads(captured.out[captured.out.index("[\n"):])
    assert result["images"] == 11 and result["rows_unreadable"] == 1
    assert "nsfw_rate" in result["metrics"]
    assert any("could not be read" in w for w in result["warnings"])
    left_out = pq.read_table(run_dir / layout.SCORES / "unreadable.parquet").to_pylist()
    assert [r["row_id"] for r in left_out] == [bad_row]
    assert "undecodable image" in left_out[0]["reason"]
    run = MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.data.metrics["rows_unreadable"] == 1 and run.data.metrics["images"] == 11


@pytest.mark.ray
@pytest.mark.slow
def test_a_changed_negative_prompt_is_refused_and_job_yaml_kept(ray_session, tmp_path, capsys):
    small_job(tmp_path, "negatives")
    assert main(["run", str(tmp_path / "job.yaml")]) == 0
    job_yaml = tmp_path / "out" / "negatives" / layout.JOB_SPEC
    before = job_yaml.read_text()
    lines = (tmp_path / "prompts.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"prompt": "prompt 2", "negative": "sharp"})
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "job.yaml").write_text(
        (tmp_path / "job.yaml").read_text().replace('"checkpoint_rows": 4',
                                                    '"checkpoint_rows": 5'))
    capsys.readouterr()
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "negative_prompt 'blurry 2'" in err and "'sharp'" in err
    assert job_yaml.read_text() == before  # the refused spec did not overwrite it


# -- input --------------------------------------------------------------------------------------


def test_absurdly_deep_nesting_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nested" in err and "Traceback" not in err


def test_a_repeated_id_among_100k_prompts_is_named(tmp_path, capsys):
    lines = [json.dumps({"id": f"p{i}", "prompt": "x"}) for i in range(100_000)]
    lines.append(json.dumps({"id": "p77", "prompt": "again"}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "many", "prompts": {"file": "prompts.jsonl", "columns": {"id": "id"}},
        "models": [{"model": "tiny:sd"}]}))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    assert "id 'p77' appears more than once" in capsys.readouterr().err


def test_non_finite_pixels_are_a_row_error_not_a_black_image():
    from darkroom.platform.engine.generator import ImageGenerator

    generator = ImageGenerator({"model": "tiny:sd"}, runtime={"device": "cpu"},
                          defaults={"steps": 2, "width": 32, "height": 32})
    (row,) = generator.generate([{"seed": 1, "prompt": "x", "guidance_scale": float("inf")}])
    assert row["image"] is None and "non-finite" in row["error"]
    (row,) = generator.generate([{"seed": 1, "prompt": "x", "guidance_scale": 3.0}])
    assert row["error"] is None and row["image"]
