"""What every feature extractor is made of: the loaded extractor, its registry entry, the error for
missing weights, and the small helpers extractors share (image batches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkroom.platform.errors import UserError


class WeightsMissing(UserError):
    """An extractor's weights are not on this machine; the message says what to put where."""


@dataclass
class FeatureExtractor:
    """A loaded extractor: `fn` maps a batch of uint8 HxWx3 images to float32 N x num_features."""

    name: str
    num_features: int
    protocol: dict[str, Any]
    fn: Callable[[Sequence[np.ndarray]], np.ndarray] = field(repr=False)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of a batch as float32 N x num_features; no images give 0 rows."""
        if not len(images):
            return np.zeros((0, self.num_features), np.float32)
        return np.asarray(self.fn(images), dtype=np.float32).reshape(len(images), -1)


@dataclass(frozen=True)
class ExtractorEntry:
    """How to build an extractor; `protocol` and `check` answer cheaply, without loading it."""

    build: Callable[[str | None, str], FeatureExtractor]  # (weights, torch device)
    protocol: Callable[[str | None], dict[str, Any]]
    check: Callable[[str | None], str | None] = lambda weights: None
    description: str = ""


def to_float_nchw(images: Sequence[np.ndarray]):
    """uint8 HxWx3 images of one size -> float NCHW tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def per_size(fn: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[..., np.ndarray]:
    """Run a batch function on each group of same-sized images, keeping the order: one batch
    can span runs generated at different sizes."""

    def wrapped(images: Sequence[np.ndarray]) -> np.ndarray:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        out: list[Any] = [None] * len(images)
        for members in groups.values():
            for i, row in zip(members, fn([images[i] for i in members]), strict=True):
                out[i] = row
        return np.stack(out)

    return wrapped
