"""Corpus math over feature arrays: the Fréchet distance (FID, Heusel et al. 2017; FD-DINOv2,
Stein et al. 2023) and the squared MMD (KID, Bińkowski et al. 2018; CMMD, Jayasumana et al. 2024).

Two backends compute the logged FID and KID from the same features: `cleanfid` (clean-fid's
numpy/scipy code, the default) and `torchmetrics` (its FrechetInceptionDistance /
KernelInceptionDistance fed the features through an identity module). Both use the covariance
with n-1 and KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random
subsets.

`Frechet` and `MMD` compute the same quantities for many weighted resamples of the generated
rows at once (the reference stays fixed), for bootstrap intervals, with torch on the
evaluation's device (`tensors.py`): the reference's square root is taken once, and each
resample costs the eigenvalues of one symmetric matrix, the smaller of d x d and drawn x drawn
(FID), or its share of one pass over the kernel matrix in blocks (MMD), never a new feature
extraction.
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


# -- resampled statistics (bootstrap) -------------------------------------------------------------


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (negative eigenvalues, round-off of a
    rank-deficient covariance, are taken as 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


class Frechet:
    """FID of weighted resamples of generated features against fixed reference statistics.

    ||mu - mu_r||^2 + Tr(S) + Tr(S_r) - 2 Tr((S_r^1/2 S S_r^1/2)^1/2) (Heusel et al. 2017). The
    reference's square root R is taken once and the rows are moved into its basis once
    (z = x R); a resample's last trace is then that of (A^T A)^1/2 for its drawn rows of z,
    centred and weighted by the square root of their counts: the eigenvalues of the smaller of
    A^T A (d x d) and A A^T (drawn x drawn), which share their nonzero ones. Below d drawn
    images (2,000 images at 2048-d) the second is smaller, and it has no zero eigenvalues whose
    round-off would add to the trace. Means and traces are sums over rows, for all resamples in
    one product; they are taken about the run's mean, which keeps their round-off small.
    """

    def __init__(self, features: np.ndarray, ref: Stats) -> None:
        from darkroom.evals.metrics import tensors

        x = np.asarray(features, np.float64)
        self.count, self.dims = x.shape
        centre = x.mean(axis=0)
        root = _sym_sqrt(np.asarray(ref.sigma, np.float64))
        self.x = tensors.tensor(x - centre)  # float64, about the run's mean
        self.norms = (self.x**2).sum(dim=1)
        self.root = tensors.tensor(root)
        self.z = tensors.tensor(self.x, tensors.precision(self.dims)) @ tensors.tensor(
            root, tensors.precision(self.dims))  # the rows in the reference's basis
        self.offset = tensors.tensor(centre - np.asarray(ref.mu, np.float64))
        self.trace_r = float(np.trace(ref.sigma))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """One FID per row of `counts` (B x n; a row of ones is the plain FID)."""
        import torch

        from darkroom.evals.metrics import tensors

        c = tensors.tensor(counts).to(self.x.device)
        total = c.sum(dim=1)
        usable = (total >= 2) & ((c > 0).sum(dim=1) >= 2)
        out = torch.full((len(c),), float("nan"), dtype=torch.float64, device=c.device)
        if not len(c) or not bool(usable.any()):
            return tensors.numpy(out)
        mean = c @ self.x / total[:, None]  # each resample's mean, minus the run's
        trace = (c @ self.norms - total * (mean**2).sum(dim=1)) / (total - 1)
        shift = (mean @ self.root).to(self.z.dtype)  # the means in the reference's basis
        for b in torch.nonzero(usable).flatten().tolist():
            drawn = torch.nonzero(c[b]).flatten()
            weights = c[b, drawn].sqrt().to(self.z.dtype)
            rows = (self.z[drawn] - shift[b]) * weights[:, None]
            root_trace = tensors.root_trace(rows, float(total[b]) - 1)
            out[b] = ((mean[b] + self.offset) ** 2).sum() + trace[b] + self.trace_r \
                - 2 * root_trace
        return tensors.numpy(out)


def _namespace(a):
    """numpy or torch, whichever `a` belongs to (the kernels take either)."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch
    return np


def polynomial_kernel(a, b):
    """KID's kernel (x.y / d + 1)^3 (Bińkowski et al. 2018), of numpy arrays or tensors."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def rbf_kernel(sigma: float) -> Callable:
    """The Gaussian RBF kernel exp(-||x - y||^2 / (2 sigma^2)) (CMMD uses sigma 10)."""

    def kernel(a, b):
        xp = _namespace(a)
        squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return xp.exp(-xp.clip(squared, 0, None) / (2 * sigma**2))

    return kernel


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, kernel: Callable) -> float:
    """The unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3): the within-set means leave
    out i = j, the cross mean keeps every pair."""
    return float(MMD(x, y, kernel)(np.ones((1, len(x))))[0])


class MMD:
    """Unbiased MMD^2 of weighted resamples of generated rows `x` against fixed reference rows
    `y` (Gretton et al. 2012, eq. 3), for KID's cubic kernel or CMMD's Gaussian one.

    A resample repeats rows; pairs of a row with its own copies are left out of the within-set
    mean as i = j is, so a resample stays unbiased. The kernel is evaluated in blocks of rows
    (memory O(block x n)): once against the reference, and once a call against the generated
    rows, whose block serves every resample at once (B x n x n sums, in float64).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, kernel: Callable, block: int = 1024,
                 reference_term: bool = True):
        import torch

        from darkroom.evals.metrics import tensors

        dtype = tensors.precision(np.shape(x)[1])
        self.x, self.y = tensors.tensor(x, dtype), tensors.tensor(y, dtype)
        self.kernel, self.block = kernel, block
        m = len(self.y)
        self.yy = 0.0  # reference_term=False: a constant left out (differences do not need it)
        if reference_term:
            within_y = sum(float(kernel(self.y[s], self.y).double().sum())
                           for s in tensors.blocks(m, block))
            diag_y = sum(float(torch.diagonal(kernel(self.y[s], self.y[s])).double().sum())
                         for s in tensors.blocks(m, block))
            self.yy = (within_y - diag_y) / (m * (m - 1))
        # per generated row: its kernel with itself and its mean kernel with the reference
        n = len(self.x)
        self.diag = torch.cat([torch.diagonal(kernel(self.x[s], self.x[s])).double()
                               for s in tensors.blocks(n, block)])
        self.cross = torch.cat([kernel(self.x[s], self.y).double().mean(dim=1)
                                for s in tensors.blocks(n, block)])

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """One MMD^2 per row of `counts` (B x n; a row of ones is the plain estimate)."""
        from darkroom.evals.metrics import tensors

        c = tensors.tensor(counts).to(self.x.device)
        quadratic = c.new_zeros(len(c))
        for s in tensors.blocks(len(self.x), self.block):
            k = self.kernel(self.x[s], self.x).double()  # block x n
            quadratic += ((c[:, s] @ k) * c).sum(dim=1)
        total = c.sum(dim=1)
        pairs = total**2 - (c**2).sum(dim=1)  # ordered pairs of distinct rows
        within = (quadratic - (c**2) @ self.diag) / pairs.where(pairs > 0, float("nan"))
        return tensors.numpy(within + self.yy - 2 * (c @ self.cross) / total)
