"""Images as the parts take them: decoded from PNG bytes (with a stand-in for those that fail),
grouped by size, as float tensors, resized the clean-fid way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from darkroom.platform.data.records import decode_png


def decode_all(encoded: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """PNG bytes -> images, with a blank stand-in and a reason for each one that fails ("" for
    the others: an all-None column would come back from Arrow as NaNs)."""
    images: list[np.ndarray | None] = []
    reasons = np.full(len(encoded), "", dtype=object)
    for i, data in enumerate(encoded):
        try:
            images.append(decode_png(data))
        except Exception as err:  # any undecodable image is that row's problem alone
            images.append(None)
            reasons[i] = f"undecodable image: {type(err).__name__}: {str(err)[:200]}"
    shape = next((image.shape for image in images if image is not None), (64, 64, 3))
    blank = np.zeros(shape, np.uint8)
    return [blank if image is None else image for image in images], reasons


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


def clean_resizer(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """clean-fid's resize (Parmar et al. 2022): PIL bicubic on each channel in float, no
    quantisation afterwards."""
    from cleanfid.resize import make_resizer

    return make_resizer("PIL", False, "bicubic", (size, size))
