"""Today's families: SD3, Flux and any diffusers text-to-image pipeline (t2i), loaded from
folders as a hub id would be, with their conditioning, options and provenance."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import validate
from darkroom.platform.config import SpecError
from darkroom.platform.data.records import decode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.errors import UserError
from darkroom.platform.families import registered
from darkroom.platform.samplers import fitting

FAMILIES = registered()

NEW = ["sd3", "flux", "t2i"]
SIZE = {"width": 32, "height": 32, "steps": 2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """Each new family saved with `darkroom models tiny` (save_pretrained), as a user's folder."""
    root = tmp_path_factory.mktemp("families")
    for family in NEW:
        assert main(["models", "tiny", family, "--out", str(root / family)]) == 0
    return {family: root / family for family in NEW}


@pytest.mark.parametrize("family", NEW)
def test_a_saved_folder_loads_as_its_family_and_makes_images(folders, family):
    gen = ImageGenerator({"model": str(folders[family])}, runtime={"device": "cpu"}, defaults=SIZE)
    assert gen.family.name == family
    (row,) = gen.generate([{"seed": 3, "prompt": "a lighthouse"}])
    assert row["error"] is None and decode_png(row["image"]).shape == (32, 32, 3)
    assert row["sampler"] == ("ddim" if family == "t2i" else "flow_euler")
    index = json.loads((folders[family] / "model_index.json").read_text())
    expected = FAMILIES[family].pipeline or "PixArtSigmaPipeline"
    assert index["_class_name"] == expected


def test_every_pixel_changing_setting_is_in_the_row():
    spec = {"model": "tiny:flux", "dtype": "fp32", "max_sequence_length": 48,
            "true_cfg_scale": 2.0, "name": "f"}
    gen = ImageGenerator(spec, runtime={"device": "cpu"}, defaults=SIZE)
    (row,) = gen.generate([{"seed": 1, "prompt": "a fox", "negative_prompt": "blurry",
                            "guidance_scale": 3.5, "sampler": "flow_unipc",
                            "sampler_overrides": json.dumps({"shift": 2.0})}])
    assert row["error"] is None
    recorded = json.loads(row["model_spec"])
    for key, value in spec.items():
        assert recorded[key] == value, key
    assert row["negative_prompt"] == "blurry" and row["guidance_scale"] == 3.5
    config = json.loads(row["sampler_config"])
    assert config["_class_name"] == "UniPCMultistepScheduler" and config["use_flow_sigmas"]
    assert row["model_revision"].startswith("local:")


def test_flux_negative_prompts_need_true_cfg_and_change_the_image():
    plain = ImageGenerator({"model": "tiny:flux"}, runtime={"device": "cpu"}, defaults=SIZE)
    (refused,) = plain.generate([{"seed": 1, "prompt": "a fox", "negative_prompt": "blurry"}])
    assert refused["image"] is None and "true_cfg_scale" in refused["error"]
    true_cfg = ImageGenerator({"model": "tiny:flux", "true_cfg_scale": 4.0},
                         runtime={"device": "cpu"}, defaults=SIZE)
    with_negative, other_negative = true_cfg.generate([
        {"seed": 1, "prompt": "a fox", "negative_prompt": "blurry"},
        {"seed": 1, "prompt": "a fox", "negative_prompt": "sharp"}])
    a, b = (decode_png(r["image"]).astype(int) for r in (with_negative, other_negative))
    assert np.abs(a - b).max() > 0


def test_sd3_runs_without_its_t5_encoder():
    gen = ImageGenerator({"model": "tiny:sd3", "text_encoder_3": None}, runtime={"device": "cpu"},
                    defaults=SIZE)
    assert gen.pipe.text_encoder_3 is None
    (row,) = gen.generate([{"seed": 1, "prompt": "a fox"}])
    assert row["error"] is None and json.loads(row["model_spec"])["text_encoder_3"] is False


def test_sdxl_micro_conditioning_changes_the_image_and_is_recorded():
    gen = ImageGenerator({"model": "tiny:sdxl"}, runtime={"device": "cpu"}, defaults=SIZE)
    micro = json.dumps({"original_size": [256, 256], "crops_coords_top_left": [64, 0]})
    plain, conditioned = gen.generate([{"seed": 1, "prompt": "a fox"},
                                       {"seed": 1, "prompt": "a fox", "call_options": micro}])
    assert json.loads(conditioned["call_options"]) == json.loads(micro)
    assert np.abs(decode_png(plain["image"]).astype(int)
                  - decode_png(conditioned["image"]).astype(int)).max() > 0
    sd = ImageGenerator({"model": "tiny:sd"}, runtime={"device": "cpu"}, defaults=SIZE)
    (refused,) = sd.generate([{"seed": 1, "prompt": "a fox", "call_options": micro}])
    assert "micro-conditioning" in refused["error"]


def job(**changes) -> dict:
    data = {"name": "j", "prompts": {"list": ["a fox"]}, "models": [{"model": "tiny:flux"}],
            "sweep": {"sampler": ["flow_euler"], "steps": [2]},
            "generation": {"width": 32, "height": 32}}
    data.update(changes)
    return data


@pytest.mark.parametrize("family", ["sd", "sdxl", "controlnet", "sd3", "flux"])
def test_a_sampler_of_the_other_kind_is_a_validate_error_naming_the_fitting_ones(
        tmp_path, family):
    other = "ddim" if FAMILIES[family].samplers == "flow" else "flow_euler"
    with pytest.raises(SpecError) as caught:
        validate(job(models=[{"model": f"tiny:{family}"}], sweep={"sampler": [other]}),
                 base=tmp_path)
    messages = {p.path: p.message for p in caught.value.problems}
    fits = fitting(FAMILIES[family].samplers, FAMILIES[family].unfit)
    assert f"fitting: {', '.join(fits)}" in messages["sweep.sampler.0.name"]


def test_validate_refuses_what_a_family_cannot_take(tmp_path):
    cases = {
        "models.0.true_cfg_scale": job(generation={"negative_prompt": "blurry"}),
        "generation.width": job(generation={"width": 40, "height": 32}),
        "generation.original_size": job(generation={"original_size": [512, 512]}),
        "models.0.max_sequence_length": job(models=[{"model": "tiny:sd",
                                                      "max_sequence_length": 64}],
                                             sweep={"sampler": ["ddim"]}),
        "sweep.sampler.0.name": job(models=[{"model": "tiny:flux"}],
                                    sweep={"sampler": ["flow_heun"]}),
    }
    for field, data in cases.items():
        with pytest.raises(SpecError) as caught:
            validate(data, base=tmp_path)
        assert field in {p.path for p in caught.value.problems}, (field, caught.value)
    # and the good ones pass
    validate(job(models=[{"model": "tiny:flux", "true_cfg_scale": 3.0}],
                 generation={"negative_prompt": "blurry", "width": 32, "height": 32}),
             base=tmp_path)
    validate(job(models=[{"model": "tiny:sdxl"}], sweep={"sampler": ["ddim"]},
                 generation={"original_size": [512, 512], "target_size": [256, 256]}),
             base=tmp_path)


def test_a_t2i_pipelines_signature_decides_what_it_takes(tmp_path):
    # a folder as a hub download of FLUX.2 would be: a class outside the table, whose call
    # takes neither negative prompts nor eta (its weights are not needed to know that)
    folder = tmp_path / "flux2"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}))
    with pytest.raises(SpecError) as caught:
        validate(job(models=[{"model": str(folder), "max_sequence_length": 256}],
                     sweep={"sampler": ["flow_euler"], "eta": [0.5]},
                     generation={"negative_prompt": "blurry"}), base=tmp_path)
    messages = {p.path: p.message for p in caught.value.problems}
    assert set(messages) == {"generation.negative_prompt", "sweep.eta"}
    assert "Flux2Pipeline" in messages["sweep.eta"] and "takes no `eta`" in messages["sweep.eta"]
    # PixArt-Sigma (tiny:t2i) takes both
    validate(job(models=[{"model": "tiny:t2i"}], sweep={"sampler": ["ddim"], "eta": [0.5]},
                 generation={"negative_prompt": "blurry", "width": 32, "height": 32}),
             base=tmp_path)


def test_an_option_of_another_family_is_refused_at_load():
    with pytest.raises(UserError, match="`true_cfg_scale` applies to flux"):
        ImageGenerator({"model": "tiny:sd3", "true_cfg_scale": 2.0}, runtime={"device": "cpu"})


def test_models_list_shows_every_family_and_sampler():
    done = subprocess.run([sys.executable, "-m", "darkroom", "models", "list"],
                          capture_output=True, text=True, timeout=60, check=True)
    for name, family in FAMILIES.items():
        if family.call.__module__.startswith("darkroom."):  # not a test's own family
            assert f"{name} (" in done.stdout
    for name in ("tiny:sd3", "tiny:flux", "tiny:t2i", "random:flux-dev", "random:sd35-medium",
                 "flow_euler", "flow_dpmpp_2m"):
        assert name in done.stdout
