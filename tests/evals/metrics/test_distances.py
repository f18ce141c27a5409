"""FID and KID math against independent numpy/scipy computations, and backend agreement."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.metrics.distances import (
    BACKENDS,
    Stats,
    cleanfid_fid,
    cleanfid_kid,
    torchmetrics_fid,
    torchmetrics_kid,
)
from tests.evals.oracles import gaussian_features, independent_fid, independent_kid


def test_fid_matches_an_independent_computation():
    x, y = gaussian_features(0), gaussian_features(1, n=250, shift=0.4)
    expected = independent_fid(x, y)
    assert expected > 0.5
    assert cleanfid_fid(Stats.of(x), Stats.of(y)) == pytest.approx(expected, rel=1e-6)


def test_backends_agree_on_fid_and_kid():
    x, y = gaussian_features(2, n=200), gaussian_features(3, n=200, shift=0.3)
    gen, ref = Stats.of(x), Stats.of(y)
    assert torchmetrics_fid(gen, ref) == pytest.approx(cleanfid_fid(gen, ref), rel=1e-3)
    # subsets as large as both sets: every subset is the whole set, so both are deterministic
    a = cleanfid_kid(x, y, subsets=3, subset_size=200)
    b = torchmetrics_kid(x, y, subsets=3, subset_size=200)
    assert a == pytest.approx(b, rel=1e-3)
    assert a == pytest.approx(independent_kid(x, y), rel=1e-6)


def test_kid_with_random_subsets_is_seeded_and_close_to_the_full_estimate():
    x, y = gaussian_features(4, n=400), gaussian_features(5, n=400, shift=0.5)
    first = cleanfid_kid(x, y, subsets=50, subset_size=100, seed=7)
    assert first == cleanfid_kid(x, y, subsets=50, subset_size=100, seed=7)
    assert first == pytest.approx(independent_kid(x, y), rel=0.1)


def test_a_set_against_itself_is_about_zero():
    x = gaussian_features(6, n=500)
    for name, backend in BACKENDS.items():
        assert abs(backend.fid(Stats.of(x), Stats.of(x))) < 1e-5, name
    # KID is unbiased: two samples of one distribution give about 0 (either sign), far below a
    # shifted sample's
    same = gaussian_features(6, n=500, seed_data=99)
    shifted = gaussian_features(6, n=500, shift=0.5, seed_data=98)
    for name, backend in BACKENDS.items():
        near, far = backend.kid(x, same, 3, 500), backend.kid(x, shifted, 3, 500)
        assert far > 0.05 and abs(near) < far / 20, (name, near, far)
    assert cleanfid_fid(Stats.of(x), Stats.of(same)) < cleanfid_fid(Stats.of(x),
                                                                    Stats.of(shifted)) / 5


def test_torchmetrics_backend_needs_features():
    x = gaussian_features(10)
    only_moments = Stats(x.mean(0), np.cov(x, rowvar=False), len(x))
    with pytest.raises(ValueError, match="needs the features"):
        torchmetrics_fid(Stats.of(x), only_moments)
    with pytest.raises(ValueError, match="at least 2"):
        Stats.of(x[:1])
