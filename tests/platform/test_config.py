"""One config format: job files, serve files, `KEY=VALUE` overrides and `eval` flags report
duplicate keys, unknown keys and alias bombs the same way, every problem at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from darkroom.cli import main

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
# `  path: message` under `SOURCE: N problem(s):`
LINE = re.compile(r"^  (?P<path>[^:]+): (?P<message>.+)$")


def problems(err: str) -> dict[str, str]:
    """The problem lines of an error message, path -> message (checks the one format)."""
    head, *rest = err.strip().splitlines()
    assert re.match(r"^error: .+: \d+ problem\(s\):$", head), err
    found = {}
    for line in rest:
        match = LINE.match(line)
        assert match, f"not in the one format: {line!r}"
        found[match["path"]] = match["message"]
    return found


JOB = "name: ok\nprompts: {list: [a]}\nmodels: [{model: 'tiny:sd'}]\n"
SERVE = "model: {model: 'tiny:dit'}\nruntime: {device: cpu}\n"


def run(argv: list[str], capsys) -> dict[str, str]:
    assert main(argv) == 2
    return problems(capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["job", "serve"])
def test_duplicate_and_unknown_keys_come_together_in_one_format(kind, tmp_path, capsys):
    base = JOB if kind == "job" else SERVE
    section = "generation" if kind == "job" else "batching"
    key = "batch_size" if kind == "job" else "max_batch_size"
    path = tmp_path / f"{kind}.yaml"
    path.write_text(base + f"{section}: {{{key}: 2, {key}: 3, {key}z: 4}}\n")
    argv = ["validate", str(path)] if kind == "job" else ["serve", str(path), "--dry-run"]
    found = run(argv, capsys)
    assert found[f"{section}.{key}"] == f"duplicate key `{key}` (lines 4 and 4); keep one" \
        if kind == "job" else found[f"{section}.{key}"].startswith("duplicate key")
    assert f"did you mean `{key}`?" in found[f"{section}.{key}z"]


@pytest.mark.parametrize("kind", ["job", "serve"])
def test_alias_bombs_are_refused(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(BOMB)
    argv = ["validate", str(path)] if kind == "job" else ["serve", str(path), "--dry-run"]
    found = run(argv, capsys)
    assert "expands to more than 100000 values" in found["(top level)"]


def test_overrides_speak_the_same_format(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    found = run(["validate", str(path), "generation={batch_size: 2, batch_size: 3}",
                 "sweep.stepz=[2]", f"sweep.steps={'[' * 100}{']' * 100}"], capsys)
    assert found["generation.batch_size"].startswith("duplicate key `batch_size`")
    assert found["sweep.steps"].startswith("nested more than 64 levels")
    bomb = "{a: &a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip("abcde", "bcdef",
                                                                     strict=True)) + "}"
    found = run(["validate", str(path), f"sweep={bomb}"], capsys)
    assert "expands to more than 100000 values" in found["sweep"]
    found = run(["validate", str(path), "sweep.stepz=[2]"], capsys)
    assert found["sweep.stepz"] == "unknown key `stepz`; did you mean `steps`?"


def test_eval_flags_speak_the_same_format(tmp_path, capsys):
    found = run(["eval", str(tmp_path), "--metrics", "fdi,safety"], capsys)
    assert "unknown metric `fdi`; did you mean `fid`?" in found["metrics"]


def test_a_misplaced_key_is_told_where_it_belongs(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB + "runtime: {dtype: bf16}\n")
    found = run(["validate", str(path)], capsys)
    assert found["runtime.dtype"] == (
        "unknown key `dtype` here; it belongs under models.N or eval.judge")


def test_every_shipped_serve_file_reads_cleanly(monkeypatch):
    monkeypatch.setenv("DARKROOM_API_KEY", "a key")  # the GPU serve files ask for one
    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(root.glob("serve/*.yaml")):
        assert main(["serve", str(path), "--dry-run"]) == 0, path
