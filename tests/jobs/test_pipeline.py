"""A whole sweep on real local Ray with tiny models, written to real Parquet, then resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import run_job
from darkroom.jobs.plan import expand, row_id_of, row_seed
from darkroom.platform.data import layout
from darkroom.platform.data.records import ERROR_SCHEMA, IMAGE_SCHEMA, decode_png

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_prompts(folder: Path, count: int) -> Path:
    path = folder / "prompts.jsonl"
    lines = [json.dumps({"uid": f"p{i:02d}", "caption": f"prompt number {i}"})
             for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sweep_end_to_end_then_rerun_generates_nothing_then_evaluation(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    write_prompts(tmp_path, 24)
    data = {
        "name": "e2e",
        "seed": 7,
        "output": str(tmp_path / "out"),
        "prompts": {"file": "prompts.jsonl", "columns": {"prompt": "caption", "id": "uid"},
                    "images_per_prompt": 2},
        "models": [{"name": "sd", "model": "tiny:sd"}, {"name": "sdxl", "model": "tiny:sdxl"}],
        "sweep": {"sampler": ["ddim", "euler_a"], "steps": [1, 2], "guidance_scale": [2.0]},
        "generation": {"width": 32, "height": 32, "batch_size": 16},
        "compute": {"actors": {"min": 1, "max": 1}, "checkpoint_rows": 64},
        "runtime": {"device": "cpu"},
    }
    spec = validate(data, base=tmp_path)
    runs = expand(spec)
    assert len(runs) == 8

    result = run_job(spec)

    assert result.generated == 8 * 24 * 2 and result.failed == 0
    job_dir = tmp_path / "out" / "e2e"
    assert layout.run_dirs(job_dir) == sorted(job_dir / r.run_id for r in runs)
    for run in runs:
        run_dir = job_dir / run.run_id
        info = layout.read_json(run_dir / layout.RUN_INFO)
        assert (info["model_label"], info["sampler"]["name"], info["steps"]) == (
            run.model.label, run.sampler.name, run.steps)
        table = layout.read_table(run_dir / layout.IMAGES)
        assert table.schema == IMAGE_SCHEMA
        rows = table.to_pylist()
        expected = {row_id_of(run.run_id, f"p{i:02d}", s) for i in range(24) for s in range(2)}
        ids = [r["row_id"] for r in rows]
        assert len(ids) == len(set(ids)) == 48 and set(ids) == expected
        for row in rows[:3]:
            assert row["model"] == run.model.label and row["sampler"] == run.sampler.name
            assert row["steps"] == run.steps and row["job_id"] == "e2e"
            assert row["seed"] == row_seed(7, row["prompt_id"], row["sample_idx"])
            assert row["prompt"] == f"prompt number {int(row['prompt_id'][1:])}"
            assert decode_png(row["image"]).shape == (32, 32, 3)
        assert layout.read_table(run_dir / layout.ERRORS) is None
        timing = layout.read_json(run_dir / layout.TIMING)
        assert timing["images"] == 48 and timing["seconds"] > 0
        assert timing["images_per_s"] == pytest.approx(48 / timing["seconds"], rel=1e-3)
        assert not [p for p in run_dir.rglob(".*")]  # no staging files left behind
    # the same prompt and sample get the same noise in every run: same seed column
    first, second = (layout.read_table(job_dir / r.run_id / layout.IMAGES) for r in runs[:2])
    assert sorted(first.column("seed").to_pylist()) == sorted(second.column("seed").to_pylist())
    job_yaml = (job_dir / layout.JOB_SPEC).read_text()
    assert "name: e2e" in job_yaml

    # a rerun generates nothing; with an eval: section it hands the job to evaluation
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    scored = run_job(validate(data, base=tmp_path, overrides=[
        "eval={metrics: [safety]}", f"tracking={{experiment: e2e-test, uri: '{uri}'}}"]))
    assert scored.generated == 0
    assert {m["run_id"] for m in scored.metrics} == {r.run_id for r in runs}
    assert all(m["images"] == 48 and "nsfw_rate" in m["metrics"] for m in scored.metrics)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("e2e-test")
    logged = {r.data.tags.get("darkroom.run_id"): r.data.params
              for r in client.search_runs([experiment.experiment_id])}
    for run in runs:  # the parameters come from run.json as the pipeline wrote it
        assert logged[run.run_id]["sampler"] == run.sampler.name
        assert logged[run.run_id]["steps"] == str(run.steps)


def test_bad_control_images_go_to_errors_within_budget(ray_session, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "control"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG this is not an image")
    data = {
        "name": "control",
        "output": str(tmp_path / "out"),
        "prompts": {"control_images": "control", "control_prompt": "a house"},
        "models": [{"model": "tiny:controlnet"}],
        "sweep": {"sampler": ["ddim"], "steps": [1]},
        "generation": {"width": 32, "height": 32, "batch_size": 4},
        "runtime": {"device": "cpu"},
    }
    from darkroom.jobs.pipeline import JobFailed

    with pytest.raises(JobFailed, match="error budget"):
        run_job(validate(data, base=tmp_path))
    run_dir = layout.run_dirs(tmp_path / "out" / "control")[0]
    errors = layout.read_table(run_dir / layout.ERRORS)
    assert errors.schema == ERROR_SCHEMA
    assert errors.column("prompt_id").to_pylist() == ["broken.png"]
    assert "not a readable image" in errors.column("error")[0].as_py()
    images = layout.read_table(run_dir / layout.IMAGES)
    assert sorted(images.column("prompt_id").to_pylist()) == ["ok0.png", "ok1.png", "ok2.png"]
    assert images.column("control_image_sha256").null_count == 0

    # within a budget of one bad row the same job succeeds, generating nothing new
    result = run_job(validate(data, base=tmp_path, overrides=["error_budget=1"]))
    assert result.generated == 0 and result.timings[run_dir.name]["errors"] == 1
    assert sum(pq.read_metadata(f).num_rows
               for f in layout.parquet_files(run_dir / layout.IMAGES)) == 3



def test_class_labels_by_id_and_name(ray_session, tmp_path):
    spec = validate({
        "name": "classes",
        "output": str(tmp_path / "out"),
        "prompts": {"classes": [3, "seven"], "images_per_prompt": 2},
        "models": [{"model": "tiny:dit"}],
        "sweep": {"sampler": ["ddim"], "steps": [1], "guidance_scale": [1.0]},
        "runtime": {"device": "cpu"},
    }, base=tmp_path)
    assert run_job(spec).generated == 4
    (run_dir,) = layout.run_dirs(tmp_path / "out" / "classes")
    table = layout.read_table(run_dir / layout.IMAGES)
    labels = dict(zip(table.column("row_id").to_pylist(), table.column("class_label").to_pylist(),
                      strict=True))
    assert sorted(labels.values()) == [3, 3, 7, 7]
    assert all(labels[row_id] == 7 for row_id in labels if "/00001/" in row_id)
