"""Benchmark suites as prompt sources: every suite's format read from a fixture in that format,
the registry's defaults, the download into the cache through the real path (a local HTTP server
as the mirror), verification by SHA-256, pinning, and offline: exit 2 naming the URL and the
path to place the file at."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from darkroom.cli import main
from darkroom.jobs.prompts import PromptError, load_prompts
from darkroom.jobs.spec import JobSpec, PromptSource
from darkroom.platform import suites
from darkroom.platform.suites.files import MIRROR_ENV, cached_path
from tests.evals.suite_fixtures import FILES, write_suite


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of its own for the test (suites, pins)."""
    monkeypatch.setenv("DARKROOM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_suite_is_read_from_a_file_in_its_format(tmp_path):
    read = {name: suites.items(name, write_suite(name, tmp_path / name)) for name in FILES}
    assert set(read) == set(suites.suites())
    geneval = read["geneval"]
    assert [i.skills for i in geneval] == [("single_object",), ("counting",), ("colors",),
                                           ("position",)]
    assert geneval[1].checks["exclude"] == [{"class": "clock", "count": 4}]
    assert geneval[3].checks["include"][1]["position"] == ["left of", 0]
    first = read["geneval2"][0]
    assert first.prompt == "a green backpack and a pig" and first.skills == ()
    assert [(q.text, q.answer, q.skill) for q in first.questions[:2]] == [
        ("How many backpacks are in the image?", "one", "count"),
        ("Is the backpack green?", "Yes", "attribute")]
    assert first.metadata["atom_count"] == 3
    assert [i.skills for i in read["partiprompts"]] == [("Abstract",), ("Animals",),
                                                        ("Artifacts",), ("Food & Beverage",)]
    dense = read["dpg_bench"]
    assert [len(i.questions) for i in dense] == [4, 4]
    beside = dense[0].questions[3]
    assert (beside.id, beside.parents, beside.skill, beside.answer) == ("4", ("1", "3"),
                                                                       "relation", "yes")
    assert dense[0].questions[0].parents == () and dense[1].questions[1].skill == "other"
    assert [i.skills for i in read["t2i_compbench"]] == [("color",)] * 2 + [("numeracy",)] * 2
    assert read["genai_bench"][0].skills == ("attribute", "negation", "basic", "advanced")
    assert read["drawbench"][2].skills == ("Counting",)
    assert [i.prompt for i in read["coco30k"]] == ["A person on a bicycle.",
                                                   "Two dogs in the snow.", "A plate of food."]


def test_a_file_not_in_the_suites_format_names_the_row(tmp_path):
    bad = tmp_path / "evaluation_metadata.jsonl"
    bad.write_text('{"tag": "counting", "prompt": "two cats"}\n')
    with pytest.raises(suites.SuiteError, match="line 1 of evaluation_metadata.jsonl has no "
                       "`include`"):
        suites.items("geneval", bad)


def test_a_suite_source_numbers_its_prompts_and_takes_its_defaults(tmp_path):
    file = write_suite("geneval", tmp_path / "geneval")
    source = PromptSource(suite="geneval", file=str(file))
    assert source.kind == "suite" and source.images_per_prompt == 4  # GenEval's protocol
    prompts = load_prompts(PromptSource(suite="geneval", file=str(file), limit=3))
    assert [(p.prompt_id, p.prompt) for p in prompts] == [
        ("00000", "a photo of a bench"), ("00001", "a photo of three clocks"),
        ("00002", "a photo of a red car")]
    assert PromptSource(suite="t2i_compbench", images_per_prompt=2).images_per_prompt == 2
    with pytest.raises(ValueError, match="did you mean `geneval`"):
        PromptSource(suite="genevl")
    with pytest.raises(ValueError, match="got list, suite"):
        PromptSource(suite="geneval", list=["a fox"])
    job = JobSpec(name="j", prompts={"suite": "geneval2", "file": str(file)},
                  models=[{"model": "tiny:sd"}], eval={"judge": {"model": "/judge"}})
    assert job.eval.metrics == ["qa_alignment", "vqascore"]  # the suite's own
    with pytest.raises(PromptError, match="prompts.suite|not in its format"):
        load_prompts(PromptSource(suite="geneval2", file=str(file)))


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server holding the fixtures as `<suite>/<file>`, set as the mirror; yields
    (its base URL, the paths it was asked for)."""
    root = tmp_path / "mirror"
    for name in FILES:
        write_suite(name, root / name)
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(MIRROR_ENV, base)
    yield base, asked
    server.shutdown()


@pytest.mark.slow  # an HTTP server
def test_a_suite_is_downloaded_once_pinned_and_verified(cache, mirror, capsys):
    base, asked = mirror
    # no published SHA-256: refused until pinned, with the command that pins it
    with pytest.raises(suites.SuiteError, match="darkroom suites pin drawbench"):
        suites.items("drawbench")
    assert main(["suites", "pin", "drawbench"]) == 0
    digest = hashlib.sha256(FILES["drawbench"]["drawbench.csv"]).hexdigest()
    assert f"drawbench/drawbench.csv: {digest}" in capsys.readouterr().out
    assert json.loads((cache / "suites" / "pins.json").read_text()) == {
        "drawbench/drawbench.csv": digest}
    assert len(suites.items("drawbench")) == 3
    suites.items("drawbench")
    assert asked.count("/drawbench/drawbench.csv") == 1  # downloaded once
    # the cached file changed: named, not used
    path = cached_path(suites.suite("drawbench"), suites.suite("drawbench").files[0])
    path.write_text("Prompts,Category\nsomething else,Colors\n")
    with pytest.raises(suites.SuiteError, match="has SHA-256 .* not the published"):
        suites.items("drawbench")
    # a published SHA-256 the mirror's copy does not match: another version, refused
    with pytest.raises(suites.SuiteError, match="another version of PartiPrompts.tsv"):
        suites.items("partiprompts")
    assert main(["suites", "fetch", "nosuch"]) == 2


def test_offline_the_command_exits_2_naming_the_url_and_where_to_put_the_file(
        cache, tmp_path, monkeypatch, capsys):
    from tests.evals.judge_server import free_port

    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{free_port()}")  # nothing listens
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "suite", "output": str(tmp_path / "out"),
                               "prompts": {"suite": "geneval"},
                               "models": [{"model": "tiny:sd"}]}))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    geneval = suites.suite("geneval")
    assert "cannot download http://127.0.0.1:" in err
    assert "/geneval/evaluation_metadata.jsonl" in err
    assert str(cached_path(geneval, geneval.files[0])) in err
    assert geneval.files[0].sha256 in err and "Traceback" not in err
