"""The bundled digits models: they load as plain diffusers pipelines and draw the digit asked for.

The long training is not run here (`darkroom zoo train-digits`, ~30 min); `--quick` checks the
training code path end to end in a few seconds per stage.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darkroom.platform.zoo import BUILTIN_MODELS, BUNDLED_FOLDERS, WEIGHTS_ROOT, weights_folder
from darkroom.platform.zoo.classifier import digits_dataset, load_digits_classifier
from darkroom.platform.zoo.data import to_tensor
from darkroom.platform.zoo.evaluate import generate_digits, read_darkroom_json


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # one torch thread per process on these 2-core machines (see FACTS.md); restored afterwards
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def classifier():
    return load_digits_classifier()


def test_digits_dataset_shapes_and_split():
    images, labels = digits_dataset("all")
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    train, test = digits_dataset("train"), digits_dataset("test")
    assert len(train[0]) + len(test[0]) == 1797
    assert len(test[0]) == 360
    # stratified: every digit has 35-37 test images
    assert np.bincount(test[1]).min() >= 35
    # gray digits as RGB, bright ink on a dark background
    assert (images[..., 0] == images[..., 2]).all()
    assert images.mean() < 80
    with pytest.raises(ValueError, match="split"):
        digits_dataset("val")


def test_classifier_held_out_accuracy(classifier):
    images, labels = digits_dataset("test")
    x = to_tensor(images)
    accuracy = (classifier.predict(x).numpy() == labels).mean()
    assert accuracy >= 0.97
    features = classifier.features(x[:8])
    assert features.shape == (8, classifier.num_features) and classifier.num_features == 64
    # any input size: it resizes to 16x16 itself
    big = torch.nn.functional.interpolate(x[:32], size=64, mode="bilinear")
    assert (classifier.predict(big) == classifier.predict(x[:32])).float().mean() >= 0.9


def test_feature_extractor_module_for_metric_libraries(classifier):
    from darkroom.platform.zoo.classifier import DigitsFeatureExtractor

    images = torch.from_numpy(digits_dataset("test")[0][:4]).permute(0, 3, 1, 2)  # uint8 NCHW
    extractor = DigitsFeatureExtractor(classifier)
    expected = classifier.features(images.float() / 255)
    assert extractor.num_features == 64
    assert torch.allclose(extractor(images), expected)
    assert torch.allclose(DigitsFeatureExtractor(classifier, scale=255)(images.float()), expected)


def test_registry_names_and_folders():
    assert set(BUILTIN_MODELS) == {"digits-dit", "digits-ldm"}
    for name, folder in BUILTIN_MODELS.items():
        assert (folder / "model_index.json").exists()
        assert weights_folder(name) == folder
        meta = read_darkroom_json(folder)
        assert meta["family"] in ("dit", "sd") and meta["default_guidance_scale"] > 1
    with pytest.raises(KeyError, match="digits-dit"):
        weights_folder("digits-gan")


def test_weights_are_small_and_safetensors():
    files = [p for p in WEIGHTS_ROOT.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 25 * 2**20, f"bundled weights are {total / 2**20:.1f} MB"
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    for name in BUNDLED_FOLDERS:
        assert list(weights_folder(name).rglob("*.safetensors"))


def test_schedulers_match_training():
    for folder in BUILTIN_MODELS.values():
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert config["prediction_type"] == "epsilon"
        assert config["num_train_timesteps"] == 1000
        assert config["beta_schedule"] in ("linear", "scaled_linear")


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_pipeline_draws_the_requested_digit(name, classifier):
    from diffusers import DiffusionPipeline

    folder = BUILTIN_MODELS[name]
    pipe = DiffusionPipeline.from_pretrained(folder)
    guidance = read_darkroom_json(folder)["default_guidance_scale"]
    digits = list(range(10))
    images = generate_digits(pipe, digits, guidance, steps=25, seed=0)
    assert images.shape == (10, 3, 16, 16)
    assert 0 <= images.min() and images.max() <= 1
    correct = (classifier.predict(images).numpy() == np.array(digits)).sum()
    assert correct >= 8, f"{name}: classifier agrees on {correct}/10"


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_pipeline_works_with_other_samplers(name):
    from diffusers import (
        DDPMScheduler,
        DiffusionPipeline,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    pipe = DiffusionPipeline.from_pretrained(BUILTIN_MODELS[name])
    for scheduler in (DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                      EulerAncestralDiscreteScheduler):
        images = generate_digits(pipe, [3, 7], 4.0, steps=4, scheduler=scheduler)
        assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all(), scheduler


@pytest.mark.slow
def test_quick_training_run(tmp_path):
    from diffusers import DiffusionPipeline

    from darkroom.platform.zoo.train_digits import main

    report = main(tmp_path, quick=True)
    assert set(report["timings"]) == {"classifier", "vae", "dit", "ldm", "eval"}
    assert "digits-dit@guidance1" in report["eval"]
    for name in BUILTIN_MODELS:
        pipe = DiffusionPipeline.from_pretrained(tmp_path / name)
        assert generate_digits(pipe, [1], 2.0, steps=2).shape == (1, 3, 16, 16)
    load_digits_classifier(tmp_path / "digits-classifier")


def test_cli_registers_train_digits():
    import argparse

    from darkroom.platform.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["zoo", "train-digits", "--out", "/tmp/x", "--quick"])
    assert args.quick and args.out == "/tmp/x" and callable(args.handler)
