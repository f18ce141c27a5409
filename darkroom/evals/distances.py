"""Corpus math over feature arrays: FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018).

Two backends compute the same quantities: `cleanfid` (clean-fid's numpy/scipy code, the default)
and `torchmetrics` (its FrechetInceptionDistance / KernelInceptionDistance fed the features through
an identity module). Both use the covariance with n-1 and KID's cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Features of one image set, reduced: mean and covariance (n-1); features kept for KID."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> Stats:
        """Stats of an N x d feature array (N >= 2), keeping the features."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need at least 2 feature rows, got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features), features)


def cleanfid_fid(gen: Stats, ref: Stats) -> float:
    """FID (Heusel et al. 2017): the Frechet distance between two Gaussians, by clean-fid."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma))


def cleanfid_kid(gen: np.ndarray, ref: np.ndarray, subsets: int, subset_size: int,
                 seed: int = 0) -> float:
    """KID (Binkowski et al. 2018) by clean-fid: the mean polynomial-kernel MMD^2 over `subsets`
    random subsets of at most `subset_size` rows, drawn with `seed`."""
    from cleanfid.fid import kernel_distance

    # clean-fid draws its subsets from numpy's global generator: seed it, then put it back
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(np.asarray(gen, np.float64), np.asarray(ref, np.float64),
                                     num_subsets=subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


def _identity(num_features: int):
    import torch

    class Features(torch.nn.Module):
        """Passes precomputed features through, so torchmetrics does the math on them."""

        def __init__(self) -> None:
            super().__init__()
            self.num_features = num_features

        def forward(self, x):
            return x

    return Features()


def torchmetrics_fid(gen: Stats, ref: Stats) -> float:
    """FID (Heusel et al. 2017) by torchmetrics; both Stats must keep their features."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    if gen.features is None or ref.features is None:
        raise ValueError("the torchmetrics backend needs the features of both sets, not only "
                         "their mean and covariance; use backend `cleanfid` with a stats file")
    metric = FrechetInceptionDistance(feature=_identity(gen.features.shape[1]))
    metric.update(torch.from_numpy(ref.features), real=True)
    metric.update(torch.from_numpy(gen.features), real=False)
    return float(metric.compute())


def torchmetrics_kid(gen: np.ndarray, ref: np.ndarray, subsets: int, subset_size: int,
                     seed: int = 0) -> float:
    """KID (Binkowski et al. 2018) by torchmetrics: the mean over `subsets` random subsets of
    `subset_size` rows (capped at the smaller set), drawn with `seed`."""
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(subset_size, len(gen), len(ref))
    metric = KernelInceptionDistance(feature=_identity(gen.shape[1]), subsets=subsets,
                                     subset_size=subset_size)
    metric.update(torch.from_numpy(np.asarray(ref, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(gen, np.float64)), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


@dataclass(frozen=True)
class Backend:
    """One implementation of the corpus math: its FID and KID functions."""

    fid: Callable[[Stats, Stats], float]
    kid: Callable[..., float]


BACKENDS: dict[str, Backend] = {
    "cleanfid": Backend(cleanfid_fid, cleanfid_kid),
    "torchmetrics": Backend(torchmetrics_fid, torchmetrics_kid),
}
