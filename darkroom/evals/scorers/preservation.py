"""The `preservation` part and the `edit_psnr` / `edit_ssim` metrics: how much of the source an
edit keeps where it should not change. For a row with a mask, the pixels outside the mask (black:
keep); for an edit without one, the whole image. PSNR over those pixels, and the mean of SSIM's
map (Wang et al. 2004: an 11 x 11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, the
three channels averaged) over them. The source image and mask are read again from where the row
says they came from (`input_images`), at the edit's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from darkroom.evals.metrics.base import Context, RunScores, Statistic, Unavailable, mean_statistic
from darkroom.evals.units import Metric, Part, PartFn, PlannedPart, Scorer

SIGMA, TRUNCATE = 1.5, 3.5  # an 11 x 11 window: radius round(3.5 x 1.5) = 5
K1, K2, PEAK = 0.01, 0.03, 255.0


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM at every pixel of two HxWxC images (0..255), the channels averaged."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=(SIGMA, SIGMA, 0), truncate=TRUNCATE, mode="reflect")

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean(axis=2)


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    """PSNR (dB, 255 range) over the kept pixels; infinite where they are equal."""
    error = (a.astype(np.float64) - b.astype(np.float64))[keep]
    mse = float(np.mean(error**2))
    return float("inf") if mse == 0 else 10 * np.log10(PEAK**2 / mse)


def sources(record: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(the source image, the kept pixels) of a row, at the edit's size; None for a row that is
    not an edit (no source image recorded)."""
    from PIL import Image

    from darkroom.platform.data import storage
    from darkroom.platform.data.records import open_image

    inputs = {i["role"]: i for i in json.loads(record or "[]")} if record else {}
    if "image" not in inputs:
        return None
    width, height = size

    def read(role: str) -> Image.Image:
        data = storage.read_bytes(storage.location(inputs[role]["path"]))
        return open_image(data, f"the {role} image")

    source = read("image").convert("RGB")
    if source.size != size:
        source = source.resize(size, Image.Resampling.BICUBIC)  # as the edit was made
    keep = np.ones((height, width), bool)
    if "mask" in inputs:
        mask = read("mask").convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)
        keep = np.asarray(mask) < 128  # white is repainted
    return np.asarray(source), keep


def _build(planned: PlannedPart, device: str) -> PartFn:
    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = batch.get("input_images", [None] * len(images))
        psnrs = np.full(len(images), np.nan)
        ssims = np.full(len(images), np.nan)
        for i, (image, record) in enumerate(zip(images, records, strict=True)):
            found = sources(record, (image.shape[1], image.shape[0]))
            if found is None:
                continue
            source, keep = found
            if keep.any():
                psnrs[i] = psnr(image, source, keep)
                ssims[i] = float(ssim_map(image, source)[keep].mean())
        return {"edit_psnr": psnrs, "edit_ssim": ssims}

    return part


def _edited(scores: RunScores, column: str) -> np.ndarray:
    values = np.asarray(scores.column(column), dtype=np.float64)
    edited = ~np.isnan(values)
    if not edited.any():
        raise Unavailable("no edited images in this run (no source image recorded with a row)")
    return edited


def edit_psnr(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Mean PSNR (dB) against the source over the pixels an edit should keep; pixels kept
    exactly count as PSNR 100 (an infinite PSNR would make the mean meaningless)."""
    edited = _edited(scores, "edit_psnr")
    values = np.minimum(np.asarray(scores.column("edit_psnr"), dtype=np.float64), 100.0)
    return {"edit_psnr": mean_statistic(np.where(edited, values, 0.0), edited, (0.0, 100.0))}


def edit_ssim(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Mean SSIM against the source over the pixels an edit should keep."""
    edited = _edited(scores, "edit_ssim")
    values = np.asarray(scores.column("edit_ssim"), dtype=np.float64)
    return {"edit_ssim": mean_statistic(np.where(edited, values, 0.0), edited, (-1.0, 1.0))}


UNITS = (
    Scorer("preservation", "edit", _build, ("edit_psnr", "edit_ssim"),
           "PSNR and SSIM of each edit against its source, outside the mask"),
    Metric("edit_psnr", "edit_psnr", True, Part("preservation"),
           "PSNR (dB) of an edit against its source where it should not change", edit_psnr),
    Metric("edit_ssim", "edit_ssim", True, Part("preservation"),
           "SSIM of an edit against its source where it should not change", edit_ssim),
)
