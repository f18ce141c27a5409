"""The `digits` feature extractor: the bundled digits classifier's 64-d penultimate layer,
standardised with the real training digits' statistics (protocol 2, see `digits_build`). The same
classifier judges `class_accuracy` (`classifier.py`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.scorers.features import FeatureExtractor
from darkroom.evals.scorers.images import per_size, to_float_nchw
from darkroom.evals.units import Extractor, WeightsMissing
from darkroom.platform.data.records import file_sha256


def _digits_folder(weights: str | None) -> Path:
    from darkroom.platform.zoo.classifier import default_folder

    return Path(weights).expanduser() if weights else default_folder()


def digits_check(weights: str | None) -> str | None:
    """Why the digits classifier cannot be loaded (not trained), or None."""
    folder = _digits_folder(weights)
    if (folder / "config.json").is_file():
        return None
    return f"no digits classifier in {folder}; train it with `darkroom zoo train-digits`"


def load_digits(weights: str | None = None):
    """The digits classifier saved in `weights` (a folder), or the bundled one when None;
    raises `WeightsMissing` when it has not been trained."""
    reason = digits_check(weights)
    if reason:
        raise WeightsMissing(reason)
    from darkroom.platform.zoo.classifier import load_digits_classifier

    return load_digits_classifier(_digits_folder(weights))


@functools.lru_cache(maxsize=4)
def _digits_standardisation(folder: str, weights_sha256: str) -> tuple[np.ndarray, float]:
    """The mean feature vector and RMS standard deviation of the real training digits under the
    classifier in `folder` (the sha names the weights, so new weights give new constants)."""
    import torch

    from darkroom.platform.zoo.data import digits_dataset

    model = load_digits(folder)
    images, _ = digits_dataset("train")
    with torch.no_grad():
        features = model.features(to_float_nchw(list(images))).double().numpy()
    mean = features.mean(axis=0)
    return mean, float(np.sqrt(((features - mean) ** 2).sum(axis=1).mean() / features.shape[1]))


def digits_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    """The digits extractor: the classifier's features, standardised (protocol 2)."""
    import torch

    model = load_digits(weights).to(device)
    folder = _digits_folder(weights)
    # Protocol 2: the raw features average |x|^2 / d of about 130, so KID's kernel
    # (x.y / d + 1)^3 ran into the millions and KID into the thousands, often negative. Centred
    # on the real training digits' mean and divided by their RMS standard deviation (one number
    # for all dimensions: FID only scales by its square, rankings keep), x.y / d is about 1, as
    # for Inception features.
    mean, scale = _digits_standardisation(str(folder),
                                          file_sha256(folder / "model.safetensors"))

    def fn(images: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            raw = model.features(to_float_nchw(images).to(device)).cpu().double().numpy()
        return (raw - mean) / scale

    return FeatureExtractor("digits", model.num_features, digits_protocol(weights), per_size(fn))


def digits_protocol(weights: str | None) -> dict[str, Any]:
    """The digits extractor's protocol: weights hash, resize, standardisation."""
    folder = _digits_folder(weights)
    if digits_check(weights):
        raise WeightsMissing(digits_check(weights))
    return {"extractor": "digits", "version": 2, "weights": "digits-classifier",
            "weights_sha256": file_sha256(folder / "model.safetensors"),
            "resize": "bilinear antialias to 16x16", "features": "penultimate, 64",
            "standardised": "minus the real training digits' mean feature, over their RMS "
                            "standard deviation"}


UNITS = (
    Extractor("digits", digits_build, digits_protocol,
              "the bundled digits classifier's penultimate layer", check=digits_check),
)
