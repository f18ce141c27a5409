"""Batch image editing end to end on real Ray: an inpainting job from folders of images and
masks swept over `strength`, an instruction-edit job from a prompt file with an image column,
each row's inputs recorded and replayed; bad inputs refused before the actors start."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.jobs.pipeline import run_job
from darkroom.jobs.replay import replay
from darkroom.platform.data import layout
from darkroom.platform.data.records import decode_png, encode_png

pytestmark = [pytest.mark.ray, pytest.mark.slow]
COMMON = {"compute": {"actors": {"min": 1, "max": 1}}, "runtime": {"device": "cpu"},
          "generation": {"batch_size": 4}}


def sources(tmp_path):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    pictures = {}
    for name in ("a.png", "b.png"):
        pictures[name] = rng.integers(0, 255, (64, 48, 3), np.uint8)  # 48 wide, 64 high
        mask = np.zeros((64, 48, 3), np.uint8)
        mask[16:48, 8:40] = 255
        (images / name).write_bytes(encode_png(pictures[name]))
        (masks / name).write_bytes(encode_png(mask))
    return images, masks, pictures


def test_an_inpainting_sweep_and_an_instruction_edit_job(ray_session, tmp_path, capsys):
    images, masks, pictures = sources(tmp_path)
    inpaint = validate({
        "name": "inpaint", "output": str(tmp_path / "out"), **COMMON,
        "prompts": {"images": str(images), "masks": str(masks), "instruction": "a lighthouse",
                    "images_per_prompt": 2},
        "models": [{"model": "tiny:sd-inpaint", "keep_unmasked": True}],
        "sweep": {"sampler": ["ddim"], "steps": [4], "strength": [0.75, 1.0]},
        "eval": {"metrics": ["edit_psnr", "edit_ssim"], "bootstrap": {"resamples": 50}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }, base=tmp_path)
    result = run_job(inpaint)
    assert result.generated == 2 * 2 * 2 and result.failed == 0
    for run in result.metrics:  # the unmasked pixels are the source's: PSNR at its cap
        assert run["metrics"]["edit_psnr"] == 100.0, run
        assert 0.5 < run["metrics"]["edit_ssim"] < 1.0 and not run["missing"], run
    job_dir = tmp_path / "out" / "inpaint"
    for run_dir in layout.run_dirs(job_dir):
        table = layout.read_table(run_dir / layout.IMAGES)
        for row in table.to_pylist():
            image = decode_png(row["image"])
            assert image.shape == (64, 48, 3)  # the source's size, on the model's grid
            source = pictures[row["prompt_id"]]
            outside = np.ones((64, 48), bool)
            outside[16:48, 8:40] = False
            # keep_unmasked: the source's own pixels outside the mask, exactly
            assert np.array_equal(image[outside], source[outside])
            assert not np.array_equal(image[~outside], source[~outside])
            inputs = {i["role"]: i for i in json.loads(row["input_images"])}
            assert inputs["image"]["path"].endswith(row["prompt_id"])
            assert (inputs["image"]["width"], inputs["image"]["height"]) == (48, 64)
            assert inputs["mask"]["mode"] in ("RGB", "L") and row["strength"] in (0.75, 1.0)
        found = replay(job_dir, table.column("row_id")[0].as_py())
        assert found.max_difference <= 1

    # an instruction edit from a prompt file whose image column holds relative paths
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(
        {"prompt": f"make it {word}", "src": f"images/{name}"})
        for word, name in (("red", "a.png"), ("blue", "b.png"))) + "\n")
    kontext = validate({
        "name": "kontext", "output": str(tmp_path / "out"), **COMMON,
        "prompts": {"file": "edits.jsonl", "columns": {"image": "src"}},
        "models": [{"model": "tiny:flux-kontext"}],
        "sweep": {"sampler": ["flow_euler"], "steps": [2]},
    }, base=tmp_path)
    assert run_job(kontext).generated == 2
    (run_dir,) = layout.run_dirs(tmp_path / "out" / "kontext")
    row_id = layout.read_table(run_dir / layout.IMAGES, ["row_id"])[0][0].as_py()
    assert replay(tmp_path / "out" / "kontext", row_id).max_difference <= 1

    # a changed source image under the same job name is refused, as a changed prompt is
    (images / "a.png").write_bytes(encode_png(pictures["b.png"]))
    capsys.readouterr()
    path = tmp_path / "inpaint.yaml"
    path.write_text(json.dumps(inpaint.dump()))
    assert main(["run", str(path), "--no-eval"]) == 2
    assert "input_images" in capsys.readouterr().err
