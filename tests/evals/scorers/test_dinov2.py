"""DINOv2 features (FD-DINOv2) with a small random-init model built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.corpus import fd_dinov2
from darkroom.evals.metrics.distances import Stats
from darkroom.evals.scorers.features import check_extractor, load_extractor
from darkroom.evals.spec import EvalSpec
from darkroom.evals.units import WeightsMissing


def _images(count: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_dinov2_features_follow_the_dgm_eval_protocol(tiny_dinov2_dir):
    """Our features against the protocol done by hand: torchvision's PIL bicubic resize to
    224x224, ToTensor, ImageNet normalisation, then the CLS token of the final layer norm."""
    import torchvision.transforms as T
    from transformers import Dinov2Model

    extractor = load_extractor("dinov2", str(tiny_dinov2_dir))
    images = _images(3, size=48) + _images(1, size=20, seed=1)
    features = np.concatenate([extractor(images[:3]), extractor(images[3:])])
    assert features.shape == (4, 32) and extractor.num_features == 32
    prepare = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(),
                         T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    with torch.no_grad():
        batch = torch.stack([prepare(Image.fromarray(i)) for i in images])
        hidden = model.encoder(model.embeddings(batch)).last_hidden_state
        expected = model.layernorm(hidden)[:, 0].numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert "224" in extractor.protocol["resize"] and extractor.protocol["weights_sha256"]


def test_fd_dinov2_of_identical_sets_is_zero_and_grows_with_a_difference(tiny_dinov2_dir):
    extractor = load_extractor("dinov2", str(tiny_dinov2_dir))
    real = extractor(_images(60, seed=2))
    spec = EvalSpec(dinov2_model=str(tiny_dinov2_dir))
    ctx = Context(spec, references={"dinov2": Stats.of(real)})
    same = fd_dinov2(RunScores("r", {"row_id": np.arange(60), "features.dinov2": real}), ctx)
    assert abs(same["fd_dinov2"].value) < 1e-6
    dark = [(i * 0.3).astype(np.uint8) for i in _images(60, seed=3)]
    other = fd_dinov2(RunScores("r", {"row_id": np.arange(60),
                                      "features.dinov2": extractor(dark)}), ctx)
    assert other["fd_dinov2"].value > 0.01


def test_dinov2_without_weights_says_which_folder_to_provide(tmp_path, monkeypatch):
    reason = check_extractor("dinov2", str(tmp_path / "dinov2-large"))
    assert str(tmp_path / "dinov2-large") in reason and "eval.dinov2_model" in reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    reason = check_extractor("dinov2", None)
    assert "facebook/dinov2-large" in reason and "not on this machine" in reason
    assert "hf download facebook/dinov2-large --local-dir" in reason
    with pytest.raises(WeightsMissing, match="eval.dinov2_model"):
        load_extractor("dinov2", str(tmp_path))
