"""Safety checkers: NudeNet offline, diffusers' SD checker from a tiny saved folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.evals.scorers.safety import SD_WEIGHTS_ENV, load_safety_checker
from darkroom.platform.errors import UserError


def _images(count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8) for i in range(count)]


def test_nudenet_offline_scores_and_flags():
    checker = load_safety_checker("nudenet")
    assert checker.threshold == 0.5
    images = _images(3) + [np.zeros((40, 40, 3), np.uint8)]
    scores = checker.score(images)
    assert scores.shape == (4,) and scores.dtype == np.float64
    assert ((scores >= 0) & (scores <= 1)).all()
    assert not checker.flags(scores).any()  # noise and black images are not explicit
    # a threshold that flags everything: the path that withholds flagged images
    strict = load_safety_checker("nudenet", threshold=0.0)
    assert strict.flags(strict.score(images)).all()
    assert checker.score([]).shape == (0,)


def test_nudenet_score_does_not_depend_on_the_batch():
    from sklearn.datasets import load_sample_images

    from darkroom.evals.scorers.safety import NudeNetChecker

    photo = load_sample_images().images[0]
    checker = NudeNetChecker(labels=["FACE_FEMALE", "FACE_MALE", "FEET_COVERED"])
    single = checker.score([photo])
    batched = checker.score([photo, *_images(2)])
    assert single[0] == pytest.approx(batched[0], abs=1e-6)


def test_bad_names_thresholds_and_images():
    with pytest.raises(UserError, match="did you mean `nudenet`"):
        load_safety_checker("nudnet")
    with pytest.raises(UserError, match=r"within \[0, 1\], got 1.5"):
        load_safety_checker("nudenet", threshold=1.5)
    with pytest.raises(ValueError, match="expected uint8 HxWx3"):
        load_safety_checker("nudenet").score([np.zeros((8, 8), np.uint8)])


def test_sd_checker_needs_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(SD_WEIGHTS_ENV, raising=False)
    with pytest.raises(UserError, match="preprocessor_config.json"):
        load_safety_checker("sd")
    with pytest.raises(UserError, match="is missing"):
        load_safety_checker("sd", weights=tmp_path)


def tiny_sd_checker_folder(folder):
    """A random-init SD safety checker and CLIP processor, saved as a pipeline folder has them."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                     "num_hidden_layers": 1, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                       "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    model = StableDiffusionSafetyChecker(config)
    with torch.no_grad():  # spread the concepts so that some images fall on each side
        model.concept_embeds.normal_()
        model.special_care_embeds.normal_()
        model.concept_embeds_weights.fill_(0.3)
        model.special_care_embeds_weights.fill_(0.6)
    model.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(folder / "feature_extractor")
    return model


def test_sd_checker_agrees_with_diffusers(tmp_path):
    tiny_sd_checker_folder(tmp_path)
    checker = load_safety_checker("sd", weights=tmp_path)
    images = _images(12, size=48, seed=3)
    with torch.no_grad():  # move the concept thresholds so that about half the images flag
        checker.model.concept_embeds_weights += float(np.median(checker.margins(images))) + 1e-4
    scores = checker.score(images)
    pixels = checker.processor(images=images, return_tensors="pt").pixel_values
    _, expected = checker.model(pixels, [np.zeros(1)] * len(images))
    assert list(checker.flags(scores)) == expected
    assert len(set(expected)) == 2, "the tiny checker should flag some images and pass others"
