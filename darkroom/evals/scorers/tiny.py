"""The `tiny` feature extractor: a fixed random conv net on a 32x32 clean resize. Its features
mean nothing and its code path is the real one: for smoke runs and tests only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from darkroom.evals.scorers.features import FeatureExtractor
from darkroom.evals.scorers.images import clean_resizer
from darkroom.evals.units import Extractor


def tiny_net(num_features: int = 16, seed: int = 0):
    """A fixed random conv net: its features mean nothing, its code path is the real one."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_features),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net.eval()


def _build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch

    net = tiny_net()
    resize = clean_resizer(32)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:  # tiny: always on the CPU
        batch = np.stack([resize(image) for image in images]).transpose(0, 3, 1, 2) / 255.0
        with torch.no_grad():
            return net(torch.from_numpy(batch).float()).numpy()

    return FeatureExtractor("tiny", 16, _protocol(weights), fn)


def _protocol(weights: str | None) -> dict[str, Any]:
    return {"extractor": "tiny", "weights": "random, seed 0",
            "resize": "clean-fid clean: PIL bicubic 32x32 float", "features": "16"}


UNITS = (Extractor("tiny", _build, _protocol, "random conv net, for smoke runs and tests"),)
