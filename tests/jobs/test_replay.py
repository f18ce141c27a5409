"""`darkroom replay`: a row of each tiny family, made again from its provenance, matches the
stored image within 1/255 (one of them read from S3)."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import run_job
from darkroom.jobs.replay import replay
from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import encode_png

pytestmark = [pytest.mark.ray, pytest.mark.slow]
COMMON = {"sweep": {"sampler": ["ddim"], "steps": [2], "guidance_scale": [3.0]},
          "compute": {"actors": {"min": 1, "max": 1}}, "runtime": {"device": "cpu"}}


def a_row(job_dir) -> str:
    """The last row id of the job's first run (generated in a batch with others)."""
    run_dir = layout.run_dirs(job_dir)[0]
    ids = layout.read_table(run_dir / layout.IMAGES, ["row_id"]).column("row_id").to_pylist()
    return sorted(ids)[-1]


def test_replay_reproduces_a_row_of_each_family(ray_session, tmp_path, s3, capsys):
    control = tmp_path / "control"
    control.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        (control / name).write_bytes(encode_png(rng.integers(0, 255, (32, 32, 3), np.uint8)))
    jobs = {
        "text": {"output": str(tmp_path / "out"), "prompts": {"list": ["a fox", "a boat"],
                                                              "images_per_prompt": 2},
                 "models": [{"model": "tiny:sd"}, {"model": "tiny:sdxl"}],
                 "generation": {"width": 32, "height": 32, "batch_size": 4}},
        "classes": {"output": f"{s3}/out", "prompts": {"classes": [1, 3], "images_per_prompt": 2},
                    "models": [{"model": "tiny:dit"}], "generation": {"batch_size": 4}},
        "control": {"output": str(tmp_path / "out"),
                    "prompts": {"control_images": str(control), "control_prompt": "a house"},
                    "models": [{"model": "tiny:controlnet"}],
                    "generation": {"width": 32, "height": 32, "batch_size": 2}},
    }
    checked = {}
    for name, job in jobs.items():
        spec = validate({"name": name, **COMMON, **job}, base=tmp_path)
        run_job(spec)
        job_dir = storage.location(spec.output) / name
        for run_dir in layout.run_dirs(job_dir):
            row_id = a_row(job_dir) if run_dir == layout.run_dirs(job_dir)[0] else sorted(
                layout.read_table(run_dir / layout.IMAGES, ["row_id"])
                .column("row_id").to_pylist())[0]
            family = layout.read_table(run_dir / layout.IMAGES, ["model_family"])[0][0].as_py()
            found = replay(job_dir, row_id)
            checked[family] = found.max_difference
            assert found.original.shape == found.image.shape
    assert set(checked) == {"sd", "sdxl", "dit", "controlnet"}
    assert max(checked.values()) <= 1, checked

    # the command: a job folder on S3 and a row id; then a row that is not there
    classes = storage.location(f"{s3}/out/classes")
    capsys.readouterr()
    assert main(["replay", str(classes), a_row(classes)]) == 0
    assert "max pixel difference" in capsys.readouterr().out
    run_id = layout.run_dirs(classes)[0].name
    assert main(["replay", str(classes), f"{run_id}/99999/0"]) == 2
    assert "is not in" in capsys.readouterr().err
