"""Loading models and samplers: registry names, folders, hub ids, and the ways to get them wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from darkroom.platform.data.records import decode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.errors import ModelLoadError, UserError
from darkroom.platform.models.loading import load_model
from darkroom.platform.models.runtime import RuntimeSpec
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SamplerSpec, build_scheduler


@pytest.mark.slow  # over ten seconds: the full tier runs it
def test_saved_folder_loads_with_family_inferred_and_same_images(tmp_path):
    folder = tmp_path / "my-dit"
    done = subprocess.run(
        [sys.executable, "-m", "darkroom", "models", "tiny", "dit", "--out", str(folder)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    assert not list(folder.rglob("*.bin"))  # safetensors only
    from_folder = ImageGenerator({"model": str(folder)}, defaults={"steps": 2})
    from_registry = ImageGenerator({"model": "tiny:dit"}, defaults={"steps": 2})
    assert from_folder.family.name == "dit"
    assert from_folder.loaded.revision == f"local:{folder}"
    row = {"seed": 5, "class_label": 2}
    a, b = from_folder.generate([row])[0], from_registry.generate([row])[0]
    assert np.array_equal(decode_png(a["image"]), decode_png(b["image"]))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("tiny:sdd", "did you mean `tiny:sd`"),
        ("builtin:nope", "unknown model `builtin:nope`"),
        ("./no/such/folder", "neither a folder that exists"),
        ("nonexistent-org/nothing", "cannot load model `nonexistent-org/nothing` from the hub"),
    ],
)
def test_bad_model_names_fail_at_once_with_the_fix(model, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")):
        load_model(ModelSpec(model=model), "cpu")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_model(ModelSpec(model=str(tmp_path)), "cpu")


def test_pickle_weights_refused_unless_allowed(tmp_path):
    from darkroom.platform.models.builds import build_tiny

    folder = tmp_path / "pickled"
    build_tiny("dit").save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_model(ModelSpec(model=str(folder)), "cpu")
    assert load_model(ModelSpec(model=str(folder), allow_pickle=True), "cpu").family.name == "dit"


def test_fp16_on_cpu_and_cuda_without_gpu_are_clear_errors():
    with pytest.raises(UserError, match="fp16 is not supported on CPU"):
        load_model(ModelSpec(model="tiny:sd", dtype="fp16"), "cpu")
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        load_model(ModelSpec(model="tiny:sd"), "cuda")


def test_bf16_runs_on_cpu():
    gen = ImageGenerator({"model": "tiny:sd", "dtype": "bf16"}, defaults={"steps": 2})
    out = gen.generate([{"seed": 1, "prompt": "x"}])[0]
    assert out["error"] is None and decode_png(out["image"]).shape == (64, 64, 3)


def test_refiner_and_controlnet_only_where_they_apply():
    with pytest.raises(UserError, match="`refiner` applies to sdxl"):
        load_model(ModelSpec(model="tiny:sd", refiner="tiny:sdxl"), "cpu")
    with pytest.raises(UserError, match="`controlnet` applies to controlnet models only"):
        load_model(ModelSpec(model="tiny:sd", controlnet="tiny:controlnet"), "cpu")


def test_model_spec_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValidationError, match="dtyp"):
        ModelSpec(model="tiny:sd", dtyp="fp16")
    with pytest.raises(ValidationError, match="dtype"):
        ModelSpec(model="tiny:sd", dtype="fp8")
    with pytest.raises(ValidationError, match="low_threshold"):
        ModelSpec(model="tiny:controlnet", control={"low_threshold": 200, "high_threshold": 100})


def test_sampler_names_and_overrides_are_checked():
    with pytest.raises(ValidationError, match="did you mean `dpmpp_2m`"):
        SamplerSpec(name="dpmpp2m")
    with pytest.raises(ValidationError, match="did you mean `timestep_spacing`"):
        SamplerSpec(name="ddim", overrides={"timestep_spacin": "trailing"})
    spec = SamplerSpec(name="dpmpp_2m_karras", overrides={"timestep_spacing": "trailing"})
    scheduler = build_scheduler(spec, {"num_train_timesteps": 1000})
    assert scheduler.config.use_karras_sigmas and scheduler.config.timestep_spacing == "trailing"
    with pytest.raises(UserError, match="sampler `ddim`"):
        build_scheduler(SamplerSpec(name="ddim", overrides={"beta_schedule": "nope"}),
                        {"num_train_timesteps": 1000})


def test_sampler_overrides_reach_the_recorded_config():
    gen = ImageGenerator({"model": "tiny:sd"}, {"name": "euler", "overrides": {"timestep_spacing":
                                                                          "trailing"}},
                    defaults={"steps": 2})
    out = gen.generate([{"seed": 1, "prompt": "x"}])[0]
    config = json.loads(out["sampler_config"])
    assert config["_class_name"] == "EulerDiscreteScheduler"
    assert config["timestep_spacing"] == "trailing"


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"channels_last": True}, "channels_last"),
        ({"fuse_qkv": True}, "fuse_qkv"),
        ({"attention": "eager"}, "attention"),
        ({"vae_slicing": True}, "vae_slicing"),
        ({"vae_tiling": True}, "vae_tiling"),
        ({"attention_slicing": True}, "attention_slicing"),
    ],
)
def test_runtime_options_apply_and_are_recorded(options, name):
    gen = ImageGenerator({"model": "tiny:sd"}, runtime=options, defaults={"steps": 2})
    out = gen.generate([{"seed": 3, "prompt": "a red fox"}])[0]
    assert out["error"] is None
    recorded = json.loads(out["runtime_options"])
    assert all(recorded[k] == v for k, v in options.items())
    plain = ImageGenerator({"model": "tiny:sd"}, defaults={"steps": 2}).generate(
        [{"seed": 3, "prompt": "a red fox"}])[0]
    # speed options must not change the picture beyond rounding
    diff = np.abs(decode_png(out["image"]).astype(int) - decode_png(plain["image"]))
    assert diff.max() <= 2, name


def test_runtime_options_that_cannot_apply_are_rejected():
    with pytest.raises(UserError, match="`cpu_offload` needs a CUDA GPU"):
        ImageGenerator({"model": "tiny:sd"}, runtime={"cpu_offload": True})
    with pytest.raises(UserError, match="`fuse_qkv` is not supported by DiTPipeline"):
        ImageGenerator({"model": "tiny:dit"}, runtime={"fuse_qkv": True})
    with pytest.raises(ValidationError, match="torch_compile"):
        RuntimeSpec(torch_compile="fastest")


def test_torch_compile_wraps_the_denoiser_and_padding_keeps_rows():
    from darkroom.platform.engine.generator import _bucket
    from darkroom.platform.families import family_named
    from darkroom.platform.models.builds import build_tiny
    from darkroom.platform.models.runtime import apply_options, denoiser

    pipe = build_tiny("dit")
    assert apply_options(pipe, RuntimeSpec(torch_compile="max-autotune"),
                         family_named("dit")) == ["torch_compile"]
    assert denoiser(pipe)._compiled_call_impl is not None  # compiled lazily on first call
    assert [_bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
