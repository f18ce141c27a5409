"""Prompt sources and sweep plans (no Ray)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.plan import expand, request_rows, row_seed, run_info
from darkroom.jobs.prompts import PromptError, load_prompts
from darkroom.platform.config import SpecError


def job(tmp_path, **changes):
    data = {
        "name": "plan",
        "prompts": {"list": ["a red fox", "a lighthouse", "a teapot"]},
        "models": [{"name": "a", "model": "tiny:sd"}, {"name": "b", "model": "tiny:sdxl"}],
        "sweep": {"sampler": ["ddim", "dpmpp_2m"], "steps": [2, 4], "guidance_scale": [1.0, 5.0],
                  "eta": [0.0, 1.0]},
    }
    data.update(changes)
    return validate(data, base=tmp_path)


def test_sweep_expands_eta_only_where_the_sampler_uses_it(tmp_path):
    runs = expand(job(tmp_path))
    # 2 models x 2 steps x 2 guidance x (ddim: 2 etas + dpmpp_2m: 1)
    assert len(runs) == 2 * 2 * 2 * 3
    assert {r.eta for r in runs if r.sampler.name == "dpmpp_2m"} == {0.0}
    assert len({r.run_id for r in runs}) == len(runs)


def test_run_ids_depend_on_settings_only(tmp_path):
    first = {r.run_id for r in expand(job(tmp_path))}
    again = {r.run_id for r in expand(job(tmp_path, prompts={"list": ["other"], "limit": 1}))}
    assert first == again  # prompts are not settings: rows are keyed by prompt id
    reseeded = {r.run_id for r in expand(job(tmp_path, seed=1))}
    assert not first & reseeded
    sampler_override = job(tmp_path, sweep={"sampler": [{"name": "ddim", "overrides": {
        "timestep_spacing": "trailing"}}]})
    assert not {r.run_id for r in expand(sampler_override)} & first


def test_rows_carry_identity_and_seeds_shared_across_runs(tmp_path):
    spec = job(tmp_path, prompts={"list": ["a", "b"], "images_per_prompt": 3})
    prompts = load_prompts(spec.prompts)
    run_a, run_b = expand(spec)[:2]
    rows_a = request_rows(spec, run_a, prompts)
    rows_b = request_rows(spec, run_b, prompts)
    assert len(rows_a) == 6 and len({r["row_id"] for r in rows_a}) == 6
    assert [r["seed"] for r in rows_a] == [r["seed"] for r in rows_b]  # same noise per prompt
    assert len({r["seed"] for r in rows_a}) == 6
    assert rows_a[4]["seed"] == row_seed(spec.seed, "00001", 1)
    assert rows_a[0]["sampler"] == run_a.sampler.name and rows_a[0]["steps"] == run_a.steps
    skipped = request_rows(spec, run_a, prompts, skip={rows_a[0]["row_id"]})
    assert [r["row_id"] for r in skipped] == [r["row_id"] for r in rows_a[1:]]


def test_run_info_has_the_settings_evaluation_reads(tmp_path):
    spec = job(tmp_path)
    info = run_info(spec, expand(spec)[0], prompt_count=3).dump()
    assert set(info) >= {"run_id", "job", "model", "model_label", "sampler", "steps",
                         "guidance_scale", "eta", "width", "height", "seed",
                         "images_per_prompt", "prompt_count"}
    assert info["model"]["model"] == "tiny:sd" and info["sampler"] == {"name": "ddim",
                                                                       "overrides": {}}
    json.dumps(info)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_prompt_files(tmp_path, suffix):
    records = [{"key": "x1", "text": "a red fox", "neg": "blurry"},
               {"key": "x2", "text": "a lighthouse", "neg": ""}]
    path = tmp_path / f"prompts{suffix}"
    if suffix == ".txt":
        path.write_text("a red fox\n\n  a lighthouse  \n")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    elif suffix == ".csv":
        path.write_text("key,text,neg\nx1,a red fox,blurry\nx2,a lighthouse,\n")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    columns = {} if suffix == ".txt" else {"prompt": "text", "id": "key",
                                           "negative_prompt": "neg"}
    spec = job(tmp_path, prompts={"file": path.name, "columns": columns, "limit": 5})
    prompts = load_prompts(spec.prompts)
    assert [p.prompt for p in prompts] == ["a red fox", "a lighthouse"]
    if suffix != ".txt":
        assert [p.prompt_id for p in prompts] == ["x1", "x2"]
        assert prompts[0].negative_prompt == "blurry"
        rows = request_rows(spec, expand(spec)[0], prompts)
        assert rows[0]["negative_prompt"] == "blurry" and rows[0]["row_id"].endswith("/x1/0")


def test_limit_takes_the_first_prompts(tmp_path):
    spec = job(tmp_path, prompts={"list": ["a", "b", "c"], "limit": 2})
    assert [p.prompt for p in load_prompts(spec.prompts)] == ["a", "b"]


def test_classes_and_control_folder(tmp_path):
    dit = validate({"name": "d", "prompts": {"classes": [3, "seven"]},
                    "models": [{"model": "tiny:dit"}]}, base=tmp_path)
    assert [p.class_label for p in load_prompts(dit.prompts)] == [3, "seven"]
    with pytest.raises(SpecError, match="prompts.classes.1: .* no class named 'golden retr"):
        validate({"name": "d", "prompts": {"classes": [3, "golden retriever"]},
                  "models": [{"model": "tiny:dit"}]}, base=tmp_path)
    folder = tmp_path / "control"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    control = validate({"name": "c", "prompts": {"control_images": "control",
                                                  "control_prompt": "a house"},
                        "models": [{"model": "tiny:controlnet"}]}, base=tmp_path)
    prompts = load_prompts(control.prompts)
    assert [(p.prompt_id, p.prompt) for p in prompts] == [("a.jpg", "a house"),
                                                          ("b.png", "a house")]
    rows = request_rows(control, expand(control)[0], prompts)
    assert rows[0]["control_image"] == b"x"


def test_unreadable_parquet_is_a_prompt_error(tmp_path):
    (tmp_path / "p.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptError) as caught:
        load_prompts(job(tmp_path, prompts={"list": ["x"]}).prompts.model_copy(
            update={"list_": None, "file": str(tmp_path / "p.parquet")}))
    assert caught.value.path == "prompts.file"


def test_dry_run_prints_the_plan_without_ray(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "name": "dry", "output": str(tmp_path / "out"),
        "prompts": {"list": ["a", "b"], "images_per_prompt": 2},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim", "euler"], "steps": [2, 4]},
    }))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 run(s) x 2 prompt(s) x 2 image(s) = 16 images" in out
    assert "estimated work: 96 denoiser evaluations" in out  # 4 images x (2+4+2+4) steps x 2
    assert not (tmp_path / "out").exists()
