"""`darkroom gate`: the same rows with and without a speed option; a harmful option fails."""

from __future__ import annotations

import json

import pytest

from darkroom.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_job(tmp_path) -> str:
    (tmp_path / "job.yaml").write_text(json.dumps({
        "name": "gated", "output": str(tmp_path / "out"),
        "prompts": {"classes": [0, 1, 2, 3, 4, 5, 6, 7], "images_per_prompt": 2},
        "models": [{"model": "builtin:digits-dit"}],
        "sweep": {"sampler": ["ddim"], "steps": [12], "guidance_scale": [1.5]},
        "generation": {"batch_size": 16},
        "runtime": {"device": "cpu"},
        "eval": {"metrics": ["class_accuracy"]},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "gate": {"max_worsening": {"class_accuracy": 0.25}},
    }))
    return str(tmp_path / "job.yaml")


def test_a_mild_cache_passes_and_a_harmful_one_fails(ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    job = write_job(tmp_path)
    mild = "runtime.cache={kind: first_block, threshold: 0.02}"
    assert main(["gate", job, "--option", mild, "--tolerance", "min_psnr=15"]) == 0
    out = capsys.readouterr().out
    assert "gate: passed" in out and "speed-up:" in out and "class_accuracy" in out
    # the same rows in both arms, every image compared with its twin
    assert "images compared: 16" in out

    harmful = "runtime.cache={kind: first_block, threshold: 10.0}"
    assert main(["gate", job, "--option", harmful, "--tolerance", "min_psnr=40",
                 "--tolerance", "min_ssim=0.99"]) == 1
    out = capsys.readouterr().out
    assert "gate: FAILED" in out and "below min_psnr 40" in out

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("gated-gate")
    gates = client.search_runs([experiment.experiment_id],
                               filter_string="tags.`darkroom.kind` = 'gate'")
    assert len(gates) == 2
    verdicts = sorted(r.data.metrics["failed_tolerances"] for r in gates)
    assert verdicts[0] == 0 and verdicts[1] >= 1
    arms = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`darkroom.kind` = 'gate-arm'")
    assert len(arms) == 4 and all("class_accuracy" in r.data.metrics for r in arms)


def test_the_gate_judges_runtime_options_only(tmp_path, capsys):
    job = write_job(tmp_path)
    assert main(["gate", job, "--option", "sweep.steps=[4]"]) == 2
    assert "runtime options only" in capsys.readouterr().err
    assert main(["gate", job]) == 2
    assert "give the options to judge" in capsys.readouterr().err
