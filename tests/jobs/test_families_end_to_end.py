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
    # one job per sampler kind: a sweep's samplers must fit every model of the job
    for sampler in sorted(set(SAMPLERS.values())):
        models = [m for m in MODELS if SAMPLERS[m["name"]] == sampler]
        kind = {**job, "name": f"fam-{sampler}", "models": models,
                "sweep": {**job["sweep"], "sampler": [sampler]}}
        path.write_text(json.dumps(kind))
        assert main(["run", str(path)]) == 0, capsys.readouterr().err[-3000:]
    for model in MODELS:
        job_dir = tmp_path / "out" / f"fam-{SAMPLERS[model['name']]}"
        (run_dir,) = [r for r in layout.run_dirs(job_dir)
                      if layout.read_table(r / layout.IMAGES, ["model"])[0][0].as_py()
                      == model["name"]]
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
    for sampler in set(SAMPLERS.values()):
        experiment = client.get_experiment_by_name(f"fam-{sampler}")
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`darkroom.kind` = 'run'")
        assert len(runs) == 2
        for run in runs:
            assert run.data.metrics["nsfw_rate"] == 0.0 and run.data.metrics["images"] == 4
