"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020):
k-nearest-neighbour estimates of how much of the generated set lies on the real data's manifold
and how much of the real manifold the generated set reaches.

Each set's manifold is the union of balls around its samples, each ball as wide as the distance
from its sample to the sample's k-th nearest neighbour in the same set (itself left out).

- precision: share of generated samples inside the real manifold (k = 3);
- recall: share of real samples inside the generated manifold (k = 3);
- density: (1 / kM) sum over generated samples of the number of real balls holding each (k = 5;
  about 1 when the two sets match, above 1 when samples crowd where real ones are dense);
- coverage: share of real samples whose ball holds at least one generated sample (k = 5).

`Manifolds` computes the distances once and then each statistic for many resamples of the
generated rows (the real set stays fixed). A resample repeats rows: the generated manifold of a
resample is built from the distinct rows it holds, so a copy of a row is not its own neighbour.
Memory: the generated x generated and generated x real distance matrices (float64).
"""

from __future__ import annotations

import numpy as np

PR_K = 3  # Kynkäänniemi et al. 2019
DC_K = 5  # Naeem et al. 2020


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of a and b (len(a) x len(b))."""
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0, None))


def kth_neighbour_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its k-th nearest other row."""
    d = distances(points, points)
    np.fill_diagonal(d, np.inf)  # a sample is not its own neighbour
    return np.partition(d, k - 1, axis=1)[:, k - 1]


class Manifolds:
    """The k-NN statistics of weighted resamples of generated rows against fixed real rows."""

    def __init__(self, generated: np.ndarray, real: np.ndarray, k: int) -> None:
        gen, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
        if len(real) <= k or len(gen) <= k:
            raise ValueError(f"k-NN statistics with k = {k} need more than {k} samples in each "
                             f"set; got {len(gen)} generated and {len(real)} real")
        self.k = k
        self.cross = distances(gen, real)  # generated x real
        self.inside = self.cross <= kth_neighbour_radii(real, k)[None, :]  # gen i in real ball j
        own = distances(gen, gen)
        np.fill_diagonal(own, np.inf)
        self.order = np.argsort(own, axis=1, kind="stable")  # each row's neighbours, nearest first
        self.sorted = np.take_along_axis(own, self.order, axis=1)

    def precision(self, counts: np.ndarray) -> np.ndarray:
        """Share of generated samples (as weighted) inside the real manifold."""
        hit = self.inside.any(axis=1).astype(np.float64)
        return counts @ hit / counts.sum(axis=1)

    def density(self, counts: np.ndarray) -> np.ndarray:
        """Real balls holding each generated sample, averaged (as weighted) and divided by k."""
        held = self.inside.sum(axis=1).astype(np.float64)
        return counts @ held / (self.k * counts.sum(axis=1))

    def coverage(self, counts: np.ndarray) -> np.ndarray:
        """Share of real samples whose ball holds at least one drawn generated sample."""
        return ((counts > 0).astype(np.float64) @ self.inside > 0).mean(axis=1)

    def recall(self, counts: np.ndarray) -> np.ndarray:
        """Share of real samples inside the manifold of the drawn generated samples."""
        out = np.full(len(counts), np.nan)
        for b, present in enumerate(np.asarray(counts) > 0):
            if present.sum() <= self.k:
                continue
            # the k-th nearest *drawn* neighbour of each row: walk its sorted neighbour list
            drawn = present[self.order]
            position = np.argmax(np.cumsum(drawn, axis=1) >= self.k, axis=1)
            radius = self.sorted[np.arange(len(position)), position]
            covered = (self.cross[present] <= radius[present, None]).any(axis=0)
            out[b] = covered.mean()
        return out
