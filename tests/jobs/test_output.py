"""The output folder: what an actor writes per call, the commit rule readers follow, the resume
scan; the same code on a local folder and on S3 (a local moto server)."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from darkroom.jobs import output, resume
from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import ERROR_SCHEMA, IMAGE_SCHEMA
from darkroom.platform.data.runinfo import RunInfo


@pytest.fixture(params=["local", "s3"])
def job_dir(request, tmp_path):
    """An empty job folder with two runs (format 2), locally or in a bucket."""
    root = (storage.location(request.getfixturevalue("s3")) if request.param == "s3"
            else tmp_path)
    job = root / "job"
    output.write_job_files(job, {"name": "job"}, [run_info("r1"), run_info("r2")])
    return job


def run_info(run_id: str) -> RunInfo:
    """The run.json of a run of tiny:sd."""
    return RunInfo(run_id=run_id, model={"model": "tiny:sd"}, sampler={"name": "ddim"}, steps=2,
                   guidance_scale=5.0)


def batch(run_id: str, ids: list[int], failed: set[int] = frozenset()) -> pa.Table:
    """Rows shaped like the generator's output: image columns plus `error`."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in ids:
        row = {name: None for name in IMAGE_SCHEMA.names}
        row.update(job_id="job", run_id=run_id, row_id=f"{run_id}/{i:05d}/0", prompt_id=f"{i:05d}",
                   sample_idx=0, seed=i, prompt=f"prompt {i}", created_at=now,
                   error="`control_image` is not a readable image" if i in failed else None)
        if i not in failed:
            row.update(image=b"png", image_sha256="x", gen_seconds=0.5)
        rows.append(row)
    schema = IMAGE_SCHEMA.append(pa.field("error", pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def test_a_call_is_written_per_run_and_outcome_and_committed(job_dir):
    rows = pa.concat_tables([batch("r1", [0, 1, 2], failed={1}), batch("r2", [0, 1])])
    written = output.write_call(job_dir, rows, "inv1").to_pylist()
    assert sorted((w["run_id"], w["kind"], w["rows"]) for w in written) == [
        ("r1", "errors", 1), ("r1", "images", 2), ("r2", "images", 2)]
    assert {w["file"] for w in written} == {output.file_name("inv1", rows["row_id"].to_pylist())}
    images = layout.read_table(job_dir / "r1" / layout.IMAGES)
    errors = layout.read_table(job_dir / "r1" / layout.ERRORS)
    assert images.schema == IMAGE_SCHEMA and errors.schema == ERROR_SCHEMA
    assert images.column("row_id").to_pylist() == ["r1/00000/0", "r1/00002/0"]
    assert errors.column("row_id").to_pylist() == ["r1/00001/0"]
    (data,) = layout.parquet_files(job_dir / "r1" / layout.IMAGES)
    assert json.loads(storage.read_text(layout.marker(data)))["rows"] == 2


def test_a_retried_call_rewrites_its_own_files(job_dir):
    output.write_call(job_dir, batch("r1", [0, 1, 2], failed={1}), "inv1")
    # Ray retries the call (its actor died after committing): same rows, this time no failure
    output.write_call(job_dir, batch("r1", [0, 1, 2]), "inv1")
    assert len(layout.parquet_files(job_dir / "r1" / layout.IMAGES)) == 1
    assert layout.read_table(job_dir / "r1" / layout.IMAGES).num_rows == 3
    # the first attempt's errors file no longer counts
    assert layout.parquet_files(job_dir / "r1" / layout.ERRORS) == []


def test_readers_trust_committed_files_only_and_keep_one_copy_of_a_row(job_dir):
    folder = job_dir / "r1" / layout.IMAGES
    output.write_call(job_dir, batch("r1", [0, 1]), "inv1")
    # a writer killed after its data file, before the marker
    storage.write_parquet(batch("r1", [5]).drop_columns(["error"]), folder / "inv2-dead.parquet")
    # a second invocation that wrote the same rows at once (a lost race on the lease)
    output.write_call(job_dir, batch("r1", [1, 2]), "inv3")
    committed, orphans = layout.listing(folder)
    assert [f.name for f in orphans] == ["inv2-dead.parquet"] and len(committed) == 2
    ids = layout.read_table(folder, columns=["row_id"]).column("row_id").to_pylist()
    assert sorted(ids) == ["r1/00000/0", "r1/00001/0", "r1/00002/0"]


def test_tidy_removes_orphans_and_adopts_an_older_run(tmp_path):
    job = tmp_path / "job"
    # a run written before commit markers: files renamed into place, no "format" in run.json
    old = job / "old"
    (old / layout.IMAGES).mkdir(parents=True)
    (old / layout.RUN_INFO).write_text(json.dumps({"run_id": "old"}))
    storage.write_parquet(batch("old", [0]).drop_columns(["error"]),
                          old / layout.IMAGES / "a.parquet")
    (old / layout.IMAGES / ".b.parquet.tmp").write_bytes(b"half a file")
    assert len(layout.parquet_files(old / layout.IMAGES)) == 1  # readable as before
    output.write_job_files(job, None, [run_info("new")])
    output.write_call(job, batch("new", [0]), "inv1")
    storage.write_parquet(batch("new", [1]).drop_columns(["error"]),
                          job / "new" / layout.IMAGES / "inv2-dead.parquet")
    messages: list[str] = []
    assert [f.name for _, f in resume.tidy(old, messages.append)] == ["a.parquet"]
    assert layout.marker(old / layout.IMAGES / "a.parquet").exists()
    assert not (old / layout.IMAGES / ".b.parquet.tmp").exists()
    assert len(resume.tidy(job / "new", messages.append)) == 1
    assert not (job / "new" / layout.IMAGES / "inv2-dead.parquet").exists()
    assert any("removed 1 uncommitted file" in m for m in messages)


def test_split_done_and_changed_inputs():
    done = pa.table({"row_id": ["r/0/0", "r/1/0"], "kind": ["images", "errors"],
                     "prompt": ["a fox", None], "negative_prompt": ["", None],
                     "class_label": pa.array([None, None], pa.int64()),
                     "control_image_sha256": pa.array([None, None], pa.string()),
                     "input_images": pa.array([None, None], pa.string())}
                    ).cast(resume.DONE_SCHEMA)
    requests = pa.Table.from_pylist([{"row_id": f"r/{i}/0", "prompt": p, "negative_prompt": ""}
                                     for i, p in enumerate(["a fox", "x", "y"])])
    missing, already = resume.split_done(requests, done)
    assert missing.column("row_id").to_pylist() == ["r/2/0"]
    assert resume.input_problem(already, done) is None
    changed = requests.set_column(1, "prompt", pa.array(["a wolf", "x", "y"]))
    _, already = resume.split_done(changed, done)
    problem = resume.input_problem(already, done)
    assert "prompt 'a fox', but the job now gives 'a wolf'" in problem


@pytest.mark.ray
def test_scan_verifies_files_on_workers_and_sets_a_corrupt_one_aside(ray_session, job_dir):
    output.write_call(job_dir, batch("r1", [0, 1, 2], failed={2}), "inv1")
    output.write_call(job_dir, batch("r1", [3, 4]), "inv2")
    victim = layout.parquet_files(job_dir / "r1" / layout.IMAGES)[1]
    data = storage.read_bytes(victim)
    storage.write_bytes(victim, data[: len(data) // 2])  # a bad copy, a disk error
    messages: list[str] = []
    states = resume.scan(job_dir, ["r1", "r2"], None, messages.append)
    state = states["r1"]
    assert (state.images, state.errors, state.seconds) == (2, 1, 1.0)
    done = resume.done_rows(state.done)
    assert sorted(done.column("row_id").to_pylist()) == ["r1/00000/0", "r1/00001/0",
                                                         "r1/00002/0"]
    assert any("unreadable" in m and victim.name in m for m in messages)
    assert not storage.exists(layout.marker(victim))
    assert storage.exists(victim.with_name(f".unreadable-{victim.name}"))
    assert states["r2"].done == [] or not resume.done_rows(states["r2"].done).num_rows
