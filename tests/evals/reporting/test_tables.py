"""Tables as printed: the plain table fits 120 columns by wrapping its columns into blocks that
repeat the kept columns, and the Markdown, CSV and JSON forms carry every cell."""

from __future__ import annotations

import csv
import io
import json
import math
import re

from darkroom.evals.reporting.tables import WIDTH, as_csv, as_json, format_table, markdown

HEADER = ["run", "metric", *(f"column {i}" for i in range(12))]
BODY = [[f"run-{r}", f"metric-{r}", *(f"{r}.{i:0>14}" for i in range(12))] for r in range(3)]


def test_a_narrow_table_is_one_block():
    text = format_table(["run", "fid"], [["a", "1.0"], ["bb", "2.0"]])
    assert text.splitlines() == ["run  fid", "---  ---", "a    1.0", "bb   2.0"]


def test_a_wide_table_wraps_into_blocks_that_repeat_the_kept_columns():
    text = format_table(HEADER, BODY, keep=2)
    blocks = [b.splitlines() for b in text.split("\n\n")]
    assert len(blocks) > 1
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    seen = []
    for block in blocks:
        header = re.split(r"\s{2,}", block[0])
        assert header[:2] == ["run", "metric"]  # the kept columns in every block
        assert [line.split()[:2] for line in block[2:]] == [r[:2] for r in BODY]
        seen += header[2:]
    assert seen == HEADER[2:]  # each other column once, in order
    cells = {c for block in blocks for line in block[2:] for c in line.split()}
    assert {c for row in BODY for c in row} <= cells


def test_never_wrapped_when_asked():
    assert "\n\n" not in format_table(HEADER, BODY, width=None)


def test_markdown_csv_and_json_carry_every_cell():
    lines = markdown(["run", "note"], [["a", "x|y"]]).splitlines()
    assert lines == ["| run | note |", "|---|---|", "| a | x\\|y |"]
    records = [{"run": "a", "fid": 1.5}, {"run": "b", "kid": 0.25}]
    assert list(csv.DictReader(io.StringIO(as_csv(records)))) == [
        {"run": "a", "fid": "1.5", "kid": ""}, {"run": "b", "fid": "", "kid": "0.25"}]
    parsed = json.loads(as_json({"v": [math.nan, math.inf, 1.0]}))
    assert parsed == {"v": [None, None, 1.0]}  # JSON has no NaN
