"""The real images every digits model sees: scikit-learn's digits, upscaled to 16x16 RGB.

One function makes them so that training, evaluation reference statistics and tests all use
exactly the same pixels and the same held-out split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

IMAGE_SIZE = 16
NUM_CLASSES = 10
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ID2LABEL = dict(enumerate(DIGIT_WORDS))
TEST_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("all", "train", "test")


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 ink intensity -> [0, 1], bright ink on a dark background (as in MNIST)
    small = torch.from_numpy(digits.images).float()[:, None] / 16.0
    # Bilinear keeps strokes smooth; nearest would give blocky 2x2 pixels that no generator
    # should have to learn. With align_corners=False the output stays inside [0, 1].
    big = F.interpolate(small, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    gray = (big[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    images = np.repeat(gray[..., None], 3, axis=-1)  # N x 16 x 16 x 3
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    _, test_index = train_test_split(
        index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_index] = True
    return images, labels, is_test


def digits_dataset(split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 16 x 16 x 3, labels int64 N) of sklearn's digits.

    `split` is "all" (1797), "train" (1437) or "test" (360, stratified, fixed seed). Every
    bundled model was trained on "train" only, so "test" is an unseen reference set.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    images, labels, is_test = _all_digits()
    keep = {"all": np.ones_like(is_test), "train": ~is_test, "test": is_test}[split]
    return images[keep].copy(), labels[keep].copy()


def to_tensor(images: np.ndarray):
    """uint8 N x H x W x 3 -> float NCHW in [0, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
