"""Images as the parts take them: decoded from PNG bytes (with a stand-in for those that fail),
grouped by size, as float tensors, resized the clean-fid way.

Decoding costs memory by the size an image's header declares, not by its bytes: a 30 KB PNG can
declare 9000 x 9000 pixels (243 MB decoded). The header is read first and an image larger than
its row's recorded size (or, with none recorded, than `MAX_PIXELS`) is not decoded.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MAX_PIXELS = 8192 * 8192  # the largest image a job can ask for (sides up to 8192)


def decode_checked(data: bytes, width: Any = None, height: Any = None) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 HxWx3, refused before decoding when the header
    declares more pixels than the row's `width` x `height` (when given) or `MAX_PIXELS`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as pil:  # reads the header, not the pixels
        w, h = pil.size
        declared = _pixels(width, height)
        budget = MAX_PIXELS if declared is None else min(declared, MAX_PIXELS)
        if w * h > budget:
            what = (f"its row's {int(width)} x {int(height)}" if declared is not None
                    else f"the {MAX_PIXELS:,}-pixel cap")
            raise ValueError(f"the image declares {w} x {h} pixels, more than {what}; it was "
                             "not decoded")
        return np.asarray(pil.convert("RGB"))


def _pixels(width: Any, height: Any) -> int | None:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):  # not recorded (None, NaN from Arrow)
        return None
    return w * h if w > 0 and h > 0 else None


def decode_all(encoded: Sequence[Any], widths: Sequence[Any] | None = None,
               heights: Sequence[Any] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """PNG bytes -> images (each checked against its row's width and height, when given), with
    a blank stand-in and a reason for each one that fails ("" for the others: an all-None
    column would come back from Arrow as NaNs)."""
    images: list[np.ndarray | None] = []
    reasons = np.full(len(encoded), "", dtype=object)
    for i, data in enumerate(encoded):
        try:
            images.append(decode_checked(data, None if widths is None else widths[i],
                                         None if heights is None else heights[i]))
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
