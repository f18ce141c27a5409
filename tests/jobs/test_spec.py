"""Job files: validation with field paths, overrides, duplicate keys, the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from darkroom.cli import main
from darkroom.jobs.jobfile import load, validate
from darkroom.jobs.spec import JobSpec
from darkroom.platform.config import SpecError, parse_yaml

BAD_JOBS = Path(__file__).parent / "bad_jobs"
BAD_FILES = sorted(BAD_JOBS.glob("*.yaml"))


def expected_path(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must open with '# expect: FIELD.PATH'"
    return first.removeprefix("# expect: ").strip()


def good_job(**changes) -> dict:
    job = {
        "name": "ok",
        "prompts": {"list": ["a red fox", "a lighthouse"]},
        "models": [{"name": "m", "model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim", "euler"], "steps": [2]},
    }
    job.update(changes)
    return job


def test_corpus_is_large_enough():
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_job_exits_2_naming_the_field(path, command, capsys):
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    lines = [line.strip() for line in err.splitlines()]
    field = expected_path(path)
    assert any(line.startswith(f"{field}:") for line in lines), err
    assert "Traceback" not in out + err
    assert "Started a local Ray" not in out + err  # nothing ran


def test_messages_say_what_to_do(capsys):
    main(["validate", str(BAD_JOBS / "unknown_sampler.yaml")])
    assert "did you mean `dpmpp_2m_karras`?" in capsys.readouterr().err
    main(["validate", str(BAD_JOBS / "typo_top_level_key.yaml")])
    assert "unknown key `sweeps`; did you mean `sweep`?" in capsys.readouterr().err
    main(["validate", str(BAD_JOBS / "width_not_multiple_of_8.yaml")])
    assert "use 96 or 104" in capsys.readouterr().err
    main(["validate", str(BAD_JOBS / "duplicate_key.yaml")])
    assert "lines 6 and 8" in capsys.readouterr().err


def test_every_problem_is_reported_at_once(tmp_path):
    bad = good_job(sweep={"sampler": ["ddimm"], "steps": [0]}, error_budget=-3)
    bad["prompts"] = {"file": "missing.jsonl"}
    with pytest.raises(SpecError) as caught:
        validate(bad, base=tmp_path)
    paths = {p.path for p in caught.value.problems}
    assert {"sweep.sampler.0.name", "sweep.steps.0", "error_budget", "prompts.file"} <= paths


def test_a_good_job_validates_and_defaults_are_filled(tmp_path):
    spec = validate(good_job(), base=tmp_path)
    assert isinstance(spec, JobSpec)
    assert [s.name for s in spec.sweep.sampler] == ["ddim", "euler"]
    assert spec.compute.actors.min == 1 and spec.error_budget == 0
    with pytest.raises(ValidationError):  # frozen
        spec.name = "other"


def test_overrides_are_validated_like_the_file(tmp_path):
    spec = validate(good_job(), base=tmp_path,
                    overrides=["sweep.steps=[3, 5]", "prompts.limit=1", "models.0.dtype=bf16"])
    assert spec.sweep.steps == [3, 5] and spec.prompts.limit == 1
    assert spec.models[0].dtype == "bf16"
    with pytest.raises(SpecError) as caught:
        validate(good_job(), base=tmp_path, overrides=["sweep.stepz=[2]"])
    assert caught.value.problems[0].path == "sweep.stepz"
    with pytest.raises(SpecError) as caught:
        validate(good_job(), base=tmp_path, overrides=["models.3.dtype=bf16", "no-equals-sign"])
    assert [p.path for p in caught.value.problems] == ["models.3", "override 'no-equals-sign'"]


def test_override_from_the_command_line(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(good_job()))
    assert main(["validate", str(job), "sweep.sampler=[unipc]"]) == 0
    assert "unipc" in capsys.readouterr().out
    assert main(["validate", str(job), "sweep.sampler=[unipcc]"]) == 2
    assert "sweep.sampler.0.name: unknown sampler `unipcc`" in capsys.readouterr().err


def test_error_budget_count_or_fraction(tmp_path):
    assert validate(good_job(error_budget=5), base=tmp_path).allowed_errors(1000) == 5
    assert validate(good_job(error_budget=0.01), base=tmp_path).allowed_errors(1000) == 10


def test_prompt_paths_are_relative_to_the_job_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.txt").write_text("one\ntwo\n")
    job = tmp_path / "sub" / "job.yaml"
    job.write_text(yaml.safe_dump(good_job(prompts={"file": "p.txt"})))
    spec = load(job)
    assert Path(spec.prompts.file) == (tmp_path / "sub" / "p.txt").resolve()


def test_duplicate_keys_are_found_in_nested_lists():
    text = "models:\n  - model: tiny:sd\n    dtype: fp32\n    dtype: bf16\n"
    data, problems = parse_yaml(text, "job")
    assert [p.path for p in problems] == ["models.0.dtype"]
    assert data["models"][0]["dtype"] == "bf16"  # the last value, checked with the rest


def test_schema_command_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["required"]) == {"name", "prompts", "models"}
    assert "list" in schema["$defs"]["PromptSource"]["properties"]
    sampler_items = schema["$defs"]["SweepSpec"]["properties"]["sampler"]["items"]
    assert {"type": "string"} in sampler_items["anyOf"]  # a name or {name, overrides}


def test_example_jobs_validate(capsys, tmp_path):
    configs = Path(__file__).parents[2] / "configs" / "jobs"
    paths = sorted(configs.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"smoke", "sd15", "sdxl", "dit_xl", "controlnet_canny",
                                       "sd35", "flux", "lora_vs_base"}
    # the LoRA walkthrough's first step makes its adapter (here for tiny:sd, under tmp_path)
    assert main(["models", "random-lora", "tiny:sd", "--out", str(tmp_path / "lora")]) == 0
    for path in paths:
        first = path.read_text().splitlines()[0]
        command = "gate" if path.stem.startswith("gate") else "run"
        assert first == f"# darkroom {command} configs/jobs/{path.name}", path.name
        extra = [f"models.0.loras.0.path={tmp_path / 'lora'}",
                 "models.0.model=tiny:sd"] if path.stem == "lora_vs_base" else []
        assert main(["validate", str(path), *extra]) == 0, capsys.readouterr().err


def test_the_real_command_exits_2_without_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "darkroom", "run", str(BAD_JOBS / "unknown_sampler.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "sweep.sampler.0.name" in done.stderr and "Traceback" not in done.stderr
