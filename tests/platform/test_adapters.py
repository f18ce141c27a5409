"""LoRA adapters (made with peft, saved as diffusers saves them): scale 0 is the base model, the
adapters switch per group of rows without reloading, and each image names the files it used."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from darkroom.jobs.jobfile import validate
from darkroom.jobs.plan import expand, request_rows
from darkroom.jobs.prompts import load_prompts
from darkroom.platform.config import SpecError
from darkroom.platform.data.records import decode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.errors import ModelLoadError, UserError
from darkroom.platform.models.adapters import save_random_lora

SIZE = {"width": 32, "height": 32, "steps": 2}
ROW = {"seed": 5, "prompt": "a red fox"}


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loras")
    return {(family, seed): save_random_lora(f"tiny:{family}", root / f"{family}-{seed}", seed)
            for family in ("sd", "sdxl", "flux") for seed in (1, 2)}


def pixels(row: dict) -> np.ndarray:
    assert row["error"] is None, row["error"]
    return decode_png(row["image"]).astype(int)


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_scale_zero_is_the_base_and_two_adapters_stack(loras, family):
    base = ImageGenerator({"model": f"tiny:{family}"}, runtime={"device": "cpu"}, defaults=SIZE)
    first, second = loras[(family, 1)], loras[(family, 2)]
    gen = ImageGenerator({"model": f"tiny:{family}", "loras": [
        {"name": "one", "path": str(first)},
        {"name": "two", "path": str(second.parent), "scale": 0.7}]},
        runtime={"device": "cpu"}, defaults=SIZE)
    (plain,) = base.generate([ROW])
    off, one, both = gen.generate([{**ROW, "lora_scale": 0.0},
                                   {**ROW, "adapters": json.dumps(["one"])}, ROW])
    assert np.abs(pixels(off) - pixels(plain)).max() <= 1
    assert np.abs(pixels(one) - pixels(plain)).max() > 2
    assert np.abs(pixels(both) - pixels(one)).max() > 2
    recorded = json.loads(both["adapters"])
    assert [(a["name"], a["scale"]) for a in recorded] == [("one", 1.0), ("two", 0.7)]
    assert recorded[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert recorded[1]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert json.loads(off["adapters"]) == [{"name": "one", "scale": 0.0,
                                             "sha256": recorded[0]["sha256"]},
                                            {"name": "two", "scale": 0.0,
                                             "sha256": recorded[1]["sha256"]}]
    assert gen.adapters.loads == 2  # switching scales and sets never read the files again


def test_fused_adapters_give_the_unfused_image(loras):
    spec = {"model": "tiny:sd", "loras": [{"name": "one", "path": str(loras[("sd", 1)])}]}
    plain = ImageGenerator(spec, runtime={"device": "cpu"}, defaults=SIZE)
    fused = ImageGenerator(spec, runtime={"device": "cpu", "fuse_lora": True}, defaults=SIZE)
    rows = [ROW, {**ROW, "lora_scale": 0.5}, ROW]  # fuse, unfuse and fuse again
    for a, b in zip(plain.generate(rows), fused.generate(rows), strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert json.loads(fused.generate([ROW])[0]["runtime_options"])["fuse_lora"] is True


def test_bad_adapters_are_clear_errors(loras, tmp_path):
    with pytest.raises(ModelLoadError, match="no weights file"):
        ImageGenerator({"model": "tiny:sd", "loras": [{"name": "x", "path": str(tmp_path)}]},
                  runtime={"device": "cpu"})
    with pytest.raises(ModelLoadError, match="does not fit"):  # an SD adapter on Flux
        ImageGenerator({"model": "tiny:flux", "loras": [{"name": "x",
                                                     "path": str(loras[("sd", 1)])}]},
                  runtime={"device": "cpu"})
    with pytest.raises(UserError, match="dit models take no LoRA"):
        ImageGenerator({"model": "tiny:dit",
                        "loras": [{"name": "x", "path": str(loras[("sd", 1)])}]},
                  runtime={"device": "cpu"})


def test_a_scale_sweep_is_runs_sharing_prompts_and_seeds(loras, tmp_path):
    data = {"name": "lora", "prompts": {"list": ["a", "b"], "images_per_prompt": 2},
            "models": [{"model": "tiny:sd", "loras": [{"name": "style",
                                                        "path": str(loras[("sd", 1)])}]},
                       {"model": "tiny:sdxl"}],
            "sweep": {"sampler": ["ddim"], "steps": [2], "lora_scale": [0.0, 1.0]}}
    spec = validate(data, base=tmp_path)
    runs = expand(spec)
    assert [(r.model.model, r.lora_scale) for r in runs] == [
        ("tiny:sd", 0.0), ("tiny:sd", 1.0), ("tiny:sdxl", 1.0)]  # no adapters: one run
    prompts = load_prompts(spec.prompts)
    first, second = (request_rows(spec, run, prompts) for run in runs[:2])
    assert [(r["prompt_id"], r["seed"]) for r in first] == [
        (r["prompt_id"], r["seed"]) for r in second]
    assert [r["lora_scale"] for r in first + second] == [0.0] * 4 + [1.0] * 4
    # a changed adapter file is another run
    other = {**data, "models": [{**data["models"][0], "loras": [
        {"name": "style", "path": str(loras[("sd", 2)])}]}]}
    assert {r.run_id for r in expand(validate(other, base=tmp_path))}.isdisjoint(
        r.run_id for r in runs)
    with pytest.raises(SpecError) as caught:
        validate({**data, "sweep": {**data["sweep"], "adapters": [["style"], ["styel"]]}},
                 base=tmp_path)
    assert "did you mean `style`?" in str(caught.value)
