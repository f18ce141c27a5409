"""The torch form of the resampled math: both eigenvalue routes of the FID, the float32 products
of wide features, the BLAS Gram matrix, and the device switch (run here on the CPU; a GPU runs
the same code with device="cuda")."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.metrics import tensors
from darkroom.evals.metrics.distances import MMD, Frechet, Stats, polynomial_kernel
from tests.evals.oracles import (
    expand,
    gaussian_features,
    gaussian_fid,
    independent_fid,
    independent_mmd,
)


def fid_rooted_at_reference(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance with the square root taken of the (full-rank) reference covariance:
    the formula is symmetric, and scipy's sqrtm of a rank-deficient covariance is inexact."""
    return gaussian_fid(y.mean(0), np.cov(y.T), x.mean(0), np.cov(x.T))


def test_fid_from_the_drawn_x_drawn_matrix_when_fewer_images_than_dimensions():
    """Below d drawn images the trace comes from the drawn x drawn matrix; it equals the
    formula, plain and resampled."""
    x, y = gaussian_features(20, n=24, d=40), gaussian_features(21, n=300, d=40, shift=0.2)
    frechet = Frechet(x, Stats.of(y))
    assert frechet(np.ones((1, 24)))[0] == pytest.approx(fid_rooted_at_reference(x, y),
                                                         rel=1e-6)
    counts = np.random.default_rng(5).multinomial(24, np.full(24, 1 / 24), size=3)
    for c, value in zip(counts, frechet(counts), strict=True):
        drawn, _ = expand(x, c)
        assert value == pytest.approx(fid_rooted_at_reference(drawn, y), rel=1e-6)


def test_wide_features_in_float32_stay_close_to_the_float64_formula():
    """At 256-d and wider the products run in float32; the FID and the MMD stay within 1e-4
    (relative) of the float64 formula, far inside a resample's spread."""
    x, y = gaussian_features(22, n=400, d=300), gaussian_features(23, n=500, d=300, shift=0.1)
    assert tensors.precision(300) != tensors.precision(64)
    counts = np.random.default_rng(6).multinomial(400, np.full(400, 1 / 400), size=2)
    for c, value in zip(counts, Frechet(x, Stats.of(y))(counts), strict=True):
        drawn, _ = expand(x, c)
        assert value == pytest.approx(independent_fid(drawn, y), rel=1e-4)
    kernel = lambda a, b: (a @ b.T / 300 + 1) ** 3  # noqa: E731
    resampled = MMD(x, y, polynomial_kernel, block=128)(counts)
    for c, value in zip(counts, resampled, strict=True):
        drawn, source = expand(x, c)
        expected = independent_mmd(drawn, y, kernel, source)
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4 * abs(kernel(y, y)).mean())


def test_gram_by_blas_matches_the_product():
    import torch

    a = torch.as_tensor(np.random.default_rng(7).normal(size=(50, 9)))
    for dtype in (torch.float64, torch.float32):
        upper = torch.triu(tensors.gram(a.to(dtype)))
        assert torch.allclose(upper, torch.triu(tensors.gram_by_product(a.to(dtype))),
                              rtol=1e-5, atol=1e-4)


def test_the_device_switch_places_the_tensors():
    assert tensors.device() == "cpu"
    with tensors.on_device("meta"):
        assert tensors.tensor(np.ones(3)).device.type == "meta"
    assert tensors.tensor(np.ones(3)).device.type == "cpu"
