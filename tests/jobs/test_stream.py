"""Prompt files read on the workers (`jobs.stream`) give exactly the prompts that reading them
whole gives (ids, text, negative prompts, classes), in several blocks, with `limit`; and a bad
row past what the driver peeks at still stops the job with exit code 2."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.plan import prompts_table
from darkroom.jobs.prompts import PromptError, load_prompts
from darkroom.jobs.stream import PROMPT_SCHEMA, open_prompts

pytestmark = [pytest.mark.ray]
COUNT = 5000


def write_source(path, records: list[dict]) -> None:
    if path.suffix == ".txt":
        path.write_text("\n\n".join(r["text"] for r in records) + "\n  \n")
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                        encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=700)


def spec_for(tmp_path, name: str, **prompts):
    return validate({"name": "stream", "prompts": {"file": name, **prompts},
                     "models": [{"model": "tiny:sd"}]}, base=tmp_path, deep=False)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_streamed_prompts_are_the_prompts_read_whole(ray_session, tmp_path, suffix):
    # some texts hold line breaks other than a newline (U+2028, NEL): a line break to
    # `str.splitlines`, ordinary characters inside a JSON string or a line of text
    records = [{"key": f"0{i}", "text": f"prompt, \"number\" {i}" + ("\u2028\x85" * (i % 7 == 0)),
                "neg": f"blurry {i % 3}"} for i in range(COUNT)]
    write_source(tmp_path / f"p{suffix}", records)
    columns = {} if suffix == ".txt" else {"prompt": "text", "id": "key",
                                           "negative_prompt": "neg"}
    for limit in (None, 1234):
        spec = spec_for(tmp_path, f"p{suffix}", columns=columns, limit=limit)
        streamed = open_prompts(spec.prompts)
        # several blocks (numbered from their offsets); Ray reads a small Parquet file as one
        assert streamed.count == (limit or COUNT)
        assert len(streamed.blocks) > 1 or suffix == ".parquet"
        import ray

        got = pa.concat_tables(ray.get(streamed.blocks))
        assert got.schema == PROMPT_SCHEMA
        assert got.to_pylist() == prompts_table(load_prompts(spec.prompts)).to_pylist()
        split = streamed.split(100)
        assert max(split.counts) == 100 and split.count == streamed.count


def test_a_bad_row_the_driver_did_not_peek_at_stops_the_run(ray_session, tmp_path, capsys):
    records = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(COUNT)]
    records[4000]["id"] = "p17"
    write_source(tmp_path / "repeated.jsonl", records)
    spec = spec_for(tmp_path, "repeated.jsonl", columns={"id": "id"})
    with pytest.raises(PromptError, match="'p17' appears more than once"):
        open_prompts(spec.prompts)

    records[4000]["id"] = "p4000"
    records[4500]["prompt"] = None
    write_source(tmp_path / "no_text.jsonl", records)
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "stream", "output": str(tmp_path / "out"),
        "prompts": {"file": "no_text.jsonl", "columns": {"id": "id"}},
        "models": [{"model": "tiny:sd"}], "runtime": {"device": "cpu"}}))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2  # reads the file whole
    capsys.readouterr()
    assert main(["run", str(tmp_path / "job.yaml")]) == 2  # the workers find it
    err = capsys.readouterr().err
    assert "prompts.columns.prompt" in err and "no text" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.parquet"))
