"""The output folder writer: checkpoints, error routing, no visible half files, resume scan."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from darkroom.jobs.output import Writer, done_rows
from darkroom.platform import layout
from darkroom.platform.errors import UserError
from darkroom.platform.records import ERROR_SCHEMA, IMAGE_SCHEMA


def batch(run_id: str, ids: list[int], failed: set[int] = frozenset()) -> pa.Table:
    """Rows shaped like the Generator's output: image columns plus `error`."""
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


def test_rows_are_split_by_run_and_outcome_and_written_once(tmp_path):
    for run in ("r1", "r2"):
        for sub in (layout.IMAGES, layout.ERRORS):
            (tmp_path / run / sub).mkdir(parents=True)
    writer = Writer(tmp_path, rows_per_file=100, seconds_per_file=3600, log=lambda _: None)
    assert writer.add(batch("r1", [0, 1, 2], failed={1})) == 1
    assert writer.add(batch("r2", [0, 1])) == 0
    assert writer.add(batch("r1", [0, 1, 2], failed={1})) == 0  # a repeat: dropped
    assert not layout.parquet_files(tmp_path / "r1" / layout.IMAGES)  # still buffered
    writer.flush()
    images = layout.read_table(tmp_path / "r1" / layout.IMAGES)
    errors = layout.read_table(tmp_path / "r1" / layout.ERRORS)
    assert images.schema == IMAGE_SCHEMA and errors.schema == ERROR_SCHEMA
    assert images.column("row_id").to_pylist() == ["r1/00000/0", "r1/00002/0"]
    assert errors.column("row_id").to_pylist() == ["r1/00001/0"]
    assert layout.read_table(tmp_path / "r2" / layout.IMAGES).num_rows == 2
    assert writer.written == {"r1": 2, "r2": 2} and writer.failed == {"r1": 1}
    assert not list(tmp_path.rglob(".*"))


def test_checkpoints_every_n_rows(tmp_path):
    (tmp_path / "r1" / layout.IMAGES).mkdir(parents=True)
    writer = Writer(tmp_path, rows_per_file=4, seconds_per_file=3600, log=lambda _: None)
    writer.add(batch("r1", [0, 1]))
    assert not layout.parquet_files(tmp_path / "r1" / layout.IMAGES)
    writer.add(batch("r1", [2, 3]))
    assert len(layout.parquet_files(tmp_path / "r1" / layout.IMAGES)) == 1


def test_resume_scan_counts_done_rows_and_refuses_changed_prompts(tmp_path):
    for sub in (layout.IMAGES, layout.ERRORS):
        (tmp_path / "r1" / sub).mkdir(parents=True)
    writer = Writer(tmp_path, rows_per_file=100, seconds_per_file=3600, log=lambda _: None)
    writer.add(batch("r1", [0, 1, 2], failed={2}))
    writer.flush()
    (tmp_path / "r1" / layout.IMAGES / ".staged.parquet.tmp").write_bytes(b"half a file")
    expected = {f"r1/{i:05d}/0": {"prompt": f"prompt {i}"} for i in range(4)}
    done, errors = done_rows(tmp_path / "r1", expected)
    assert done == {"r1/00000/0", "r1/00001/0", "r1/00002/0"} and errors == 1
    expected["r1/00001/0"] = {"prompt": "another prompt"}
    with pytest.raises(UserError, match="prompt 'prompt 1', but the job now gives 'another"):
        done_rows(tmp_path / "r1", expected)
