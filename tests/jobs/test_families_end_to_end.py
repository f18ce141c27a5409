"""The new families through a whole job: `darkroom run` with an eval section on real Ray, every
pixel-changing setting of the spec found again in an image row of each family's run."""

from __future__ import annotations

import json

import pytest

from darkroom.cli import main
from darkroom.platform.data import layout

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODELS = [
    {"name": "sd3", "model": "tiny:sd3", "max_sequence_length": 24, "text_encoder_3": False},
    {"name": "flux", "model": "tiny:flux", "max_sequence_length": 24, "true_cfg_scale": 2.0},
    {"name": "t2i", "model": "tiny:t2i", "max_sequence_length": 24},
    {"name": "sdxl", "model": "tiny:sdxl", "refiner": "tiny:sdxl", "refiner_switch": 0.6},
]
SAMPLERS = {"sd3": "flow_dpmpp_2m", "flux": "flow_dpmpp_2m", "t2i": "dpmpp_2m", "sdxl": "dpmpp_2m"}


def test_each_family_runs_as_a_job_with_eval_and_records_its_settings(ray_session, tmp_path,
                                                                       capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = {
        "name": "families", "output": str(tmp_path / "out"),
        "prompts": {"list": ["a red fox", "a lighthouse"], "images_per_prompt": 2},
        "models": MODELS,
        "sweep": {"sampler": ["flow_dpmpp_2m", "dpmpp_2m"], "steps": [2],
                  "guidance_scale": [3.0]},
        "generation": {"width": 32, "height": 32, "batch_size": 4,
                       "negative_prompt": "blurry"},
        "runtime": {"device": "cpu"},
        "eval": {"metrics": ["safety"]},
        "tracking": {"uri": uri},
    }
    path = tmp_path / "job.yaml"
    # one job per family: a sweep's samplers must fit every model of the job
    for model in MODELS:
        single = {**job, "name": f"fam-{model['name']}", "models": [model],
                  "sweep": {**job["sweep"], "sampler": [SAMPLERS[model["name"]]]}}
        path.write_text(json.dumps(single))
        assert main(["run", str(path)]) == 0, capsys.readouterr().err[-3000:]
        job_dir = tmp_path / "out" / f"fam-{model['name']}"
        (run_dir,) = layout.run_dirs(job_dir)
        rows = layout.read_table(run_dir / layout.IMAGES).to_pylist()
        assert len(rows) == 4
        row = rows[0]
        recorded = json.loads(row["model_spec"])
        for key, value in model.items():
            assert recorded[key] == value, (model["name"], key)
        assert row["negative_prompt"] == "blurry" and row["guidance_scale"] == 3.0
        assert row["sampler"] == SAMPLERS[model["name"]] and row["steps"] == 2
        assert (row["width"], row["height"]) == (32, 32)
        assert row["model_family"] == model["name"]
        assert json.loads(row["sampler_config"])["_class_name"] == "DPMSolverMultistepScheduler"
    client = MlflowClient(uri)
    for model in MODELS:
        experiment = client.get_experiment_by_name(f"fam-{model['name']}")
        (run,) = client.search_runs([experiment.experiment_id],
                                    filter_string="tags.`darkroom.kind` = 'run'")
        assert run.data.metrics["nsfw_rate"] == 0.0 and run.data.metrics["images"] == 4


def test_a_lora_scale_sweep_is_two_runs_and_a_rerun_generates_nothing(ray_session, tmp_path):
    from darkroom.jobs.jobfile import validate
    from darkroom.jobs.pipeline import run_job
    from darkroom.platform.models.adapters import save_random_lora

    adapter = save_random_lora("tiny:sd", tmp_path / "lora", seed=1)
    spec = validate({
        "name": "lora", "output": str(tmp_path / "out"),
        "prompts": {"list": ["a red fox", "a lighthouse", "two cats"], "images_per_prompt": 2},
        "models": [{"model": "tiny:sd", "loras": [{"name": "style", "path": "lora"}]}],
        "sweep": {"sampler": ["ddim"], "steps": [2], "lora_scale": [0.0, 1.0]},
        "generation": {"width": 32, "height": 32, "batch_size": 4},
        "runtime": {"device": "cpu"},
    }, base=tmp_path)
    assert spec.models[0].loras[0].path == str(adapter.parent)  # relative to the job file
    first = run_job(spec)
    assert first.generated == 12 and len(first.runs) == 2
    rows = {run.lora_scale: sorted(
        layout.read_table(tmp_path / "out" / "lora" / run.run_id / layout.IMAGES).to_pylist(),
        key=lambda r: r["row_id"].split("/", 1)[1]) for run in first.runs}
    assert [(r["prompt_id"], r["sample_idx"], r["seed"]) for r in rows[0.0]] == [
        (r["prompt_id"], r["sample_idx"], r["seed"]) for r in rows[1.0]]
    assert {json.loads(r["adapters"])[0]["scale"] for r in rows[0.0]} == {0.0}
    assert {json.loads(r["adapters"])[0]["scale"] for r in rows[1.0]} == {1.0}
    assert run_job(spec).generated == 0
