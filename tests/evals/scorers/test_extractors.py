"""Feature extractors: missing weights say what to put where; the code paths run offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.evals.scorers import inception
from darkroom.evals.scorers.features import check_extractor, load_extractor
from darkroom.evals.scorers.inception import INCEPTION_ENV, INCEPTION_FILE
from darkroom.evals.units import WeightsMissing
from darkroom.platform.errors import UserError


def _images(count: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inception, "CLEANFID_CACHE", tmp_path / "cleanfid-cache")


def test_inception_without_weights_names_the_file_and_where(no_inception, tmp_path):
    reason = check_extractor("inception")
    assert INCEPTION_FILE in reason and str(tmp_path / "cleanfid-cache") in reason
    assert INCEPTION_ENV in reason and "https://" in reason
    with pytest.raises(WeightsMissing, match=INCEPTION_FILE):
        load_extractor("inception", str(tmp_path / "weights"))


class _FakeInception(torch.nn.Module):
    """Shaped like the TorchScript Inception clean-fid loads: `.layers` gives N x 2048."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(48, 2048))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_path_with_a_scripted_stand_in(no_inception, tmp_path, monkeypatch):
    fake = _FakeInception().eval()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.jit.script(fake).save(str(folder / INCEPTION_FILE))
    monkeypatch.setenv(INCEPTION_ENV, str(folder))
    assert check_extractor("inception") is None
    extractor = load_extractor("inception")
    images = _images(3)
    features = extractor(images)
    assert features.shape == (3, 2048) and extractor.num_features == 2048
    # the clean protocol by hand: float bicubic resize to 299, then (x - 128) / 128
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    batch = torch.from_numpy(np.stack([resize(i) for i in images]).transpose(0, 3, 1, 2))
    with torch.no_grad():
        expected = fake.layers((batch - 128) / 128).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    assert extractor.protocol["weights_sha256"] and "299" in extractor.protocol["resize"]


def test_tiny_extractor_is_deterministic_and_batch_independent():
    first, second = load_extractor("tiny"), load_extractor("tiny")
    images = _images(5, size=64)
    together = first(images)
    alone = np.concatenate([second([image]) for image in images])
    assert together.shape == (5, 16) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert first([]).shape == (0, 16)


def test_clip_extractor_from_a_local_folder(tiny_clip_dir, tmp_path):
    extractor = load_extractor("clip", str(tiny_clip_dir))
    features = extractor(_images(2, size=48))
    assert features.shape == (2, 8) and np.isfinite(features).all()
    assert check_extractor("clip", str(tmp_path / "absent")) is not None
    with pytest.raises(WeightsMissing, match="config.json"):
        load_extractor("clip", str(tmp_path))


def test_clip_hub_id_offline_fails_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match="give its local folder"):
        load_extractor("clip", "openai/clip-vit-large-patch14")


def test_unknown_extractor_suggests_a_name():
    with pytest.raises(UserError, match="did you mean `inception`"):
        load_extractor("inceptoin")


def test_digits_extractor_standardises_the_classifier_features():
    """Protocol 2: the bundled classifier's features minus the real training digits' mean
    feature, over their RMS standard deviation."""
    from darkroom.platform.zoo.classifier import load_digits_classifier
    from darkroom.platform.zoo.data import digits_dataset

    def raw(images):
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
            return load_digits_classifier().features(x).double().numpy()

    train, _ = digits_dataset("train")
    real = raw(train)
    mean = real.mean(axis=0)
    scale = np.sqrt(((real - mean) ** 2).sum(axis=1).mean() / real.shape[1])
    images, _ = digits_dataset("test")
    extractor = load_extractor("digits")
    features = extractor(list(images[:8]))
    assert features.shape == (8, 64)
    np.testing.assert_allclose(features, (raw(images[:8]) - mean) / scale, rtol=1e-4, atol=1e-5)
    assert extractor.protocol["version"] == 2 and "standardised" in extractor.protocol
    # real digits now have |x|^2 / d of about 1, KID's kernel works in its intended range
    standardised = extractor(list(images))
    assert 0.5 < (standardised**2).sum(axis=1).mean() / 64 < 2
