"""`darkroom replay`: rows of real jobs, made again from their provenance, match the stored
images within 1/255, whatever settings they were made with (one job read from S3)."""

from __future__ import annotations

import json

import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import run_job
from darkroom.jobs.replay import replay
from darkroom.platform.data import layout, storage

pytestmark = [pytest.mark.ray, pytest.mark.slow]
COMMON = {"sweep": {"sampler": ["ddim"], "steps": [2], "guidance_scale": [3.0]},
          "compute": {"actors": {"min": 1, "max": 1}}, "runtime": {"device": "cpu"}}


def a_row(job_dir, run_dir=None) -> str:
    """The last row id of a run (the job's first by default), generated in a batch with
    others."""
    run_dir = run_dir or layout.run_dirs(job_dir)[0]
    ids = layout.read_table(run_dir / layout.IMAGES, ["row_id"]).column("row_id").to_pylist()
    return sorted(ids)[-1]


def adapters_runs(spec, job_dir) -> None:
    """A sweep of adapter sets and scales: four runs of the same prompts and seeds, each row
    recording its adapters at their scales; a rerun generates nothing."""
    rows = {run_dir.name: sorted(layout.read_table(run_dir / layout.IMAGES).to_pylist(),
                                 key=lambda r: r["row_id"].split("/", 1)[1])
            for run_dir in layout.run_dirs(job_dir)}
    assert len(rows) == 4
    identities = {tuple((r["prompt_id"], r["sample_idx"], r["seed"]) for r in run)
                  for run in rows.values()}
    assert len(identities) == 1
    recorded = {tuple((a["name"], a["scale"]) for a in json.loads(run[0]["adapters"]))
                for run in rows.values()}
    assert recorded == {(("style", 0.5),), (("style", 1.0),),
                        (("style", 0.5), ("detail", 0.5)), (("style", 1.0), ("detail", 1.0))}
    assert run_job(spec).generated == 0


def test_replay_reproduces_every_setting_a_row_records(ray_session, tmp_path, s3, capsys):
    """Rows written by real jobs, replayed: SDXL micro-conditioning, adapters swept by set and
    scale, a class-conditional job on S3 (each family alone is replayed by the family contract
    tests, without Ray)."""
    from darkroom.platform.models.adapters import save_random_lora

    loras = [{"name": name, "path": str(save_random_lora("tiny:sd", tmp_path / name, seed=i))}
             for i, name in enumerate(("style", "detail"))]
    jobs = {
        "micro": {"output": str(tmp_path / "out"), "prompts": {"list": ["a fox", "a boat"],
                                                               "images_per_prompt": 2},
                  "models": [{"model": "tiny:sdxl"}],
                  "generation": {"width": 32, "height": 32, "batch_size": 4,
                                 "original_size": [128, 96], "crops_coords_top_left": [8, 0],
                                 "target_size": [64, 64]}},
        "adapters": {"output": str(tmp_path / "out"), "prompts": {"list": ["a fox", "a boat"]},
                     "models": [{"model": "tiny:sd", "loras": loras}],
                     "sweep": {**COMMON["sweep"], "lora_scale": [0.5, 1.0],
                               "adapters": [["style"], ["style", "detail"]]},
                     "generation": {"width": 32, "height": 32, "batch_size": 4}},
        "classes": {"output": f"{s3}/out", "prompts": {"classes": [1, 3], "images_per_prompt": 2},
                    "models": [{"model": "tiny:dit"}], "generation": {"batch_size": 4}},
    }
    checked = {}
    for name, job in jobs.items():
        spec = validate({"name": name, **COMMON, **job}, base=tmp_path)
        run_job(spec)
        job_dir = storage.location(spec.output) / name
        if name == "adapters":
            adapters_runs(spec, job_dir)
        for run_dir in layout.run_dirs(job_dir):
            found = replay(job_dir, a_row(job_dir, run_dir))
            checked[f"{name}/{run_dir.name}"] = found.max_difference
            assert found.original.shape == found.image.shape
    assert len(checked) == 1 + 4 + 1
    assert max(checked.values()) <= 1, checked

    # the command: a job folder on S3 and a row id; then a row that is not there; a tolerance
    # that is not a pixel difference
    classes = storage.location(f"{s3}/out/classes")
    capsys.readouterr()
    assert main(["replay", str(classes), a_row(classes)]) == 0
    assert "max pixel difference" in capsys.readouterr().out
    run_id = layout.run_dirs(classes)[0].name
    assert main(["replay", str(classes), f"{run_id}/99999/0"]) == 2
    assert "is not in" in capsys.readouterr().err
    assert main(["replay", str(classes), a_row(classes), "--tolerance", "-1"]) == 2
    assert "--tolerance" in capsys.readouterr().err
