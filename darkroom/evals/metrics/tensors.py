"""Where the resampled math runs: torch on the evaluation's device ("cuda" inside the Ray task
that holds a GPU when the scoring actors have one, "cpu" otherwise), batched over resamples.

Features of fewer than `WIDE` dimensions (the digits' 64, the tests') are multiplied in float64;
wider ones (Inception's 2048, DINOv2's 1024, CLIP's 768) in float32, with every sum over
resamples and the final traces in float64: float32 halves the time of the products that
dominate at that width, and its round-off stays far below the spread of the resamples
(`benchmarks/eval_scale.py` prints the largest difference against float64).

torch is imported when the math runs, never when the metrics are registered.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np

WIDE = 256  # features at least this wide are multiplied in float32

_DEVICE: contextvars.ContextVar[str] = contextvars.ContextVar("darkroom_metrics_device",
                                                              default="cpu")


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Run the resampled math inside this block on `device` ("cpu", "cuda", "cuda:1")."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def device() -> str:
    """The device the resampled math runs on here."""
    return _DEVICE.get()


def precision(dims: int) -> Any:
    """The torch dtype of the products for features of `dims` dimensions."""
    import torch

    return torch.float32 if dims >= WIDE else torch.float64


def tensor(array: Any, dtype: Any = None) -> Any:
    """A numpy array (or tensor) as a tensor on the current device (float64 by default)."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    if isinstance(array, torch.Tensor):
        return array.to(device=device(), dtype=dtype)
    return torch.as_tensor(np.asarray(array), dtype=dtype, device=device())


def gram(a: Any) -> Any:
    """a^T a, symmetric; its upper triangle is what the eigenvalue routines read (UPLO="U").
    On the CPU it is BLAS's syrk, which computes only that triangle: half the work of a
    matrix product."""
    import torch

    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64):
        return gram_by_product(a)
    from scipy.linalg import blas

    syrk = blas.ssyrk if a.dtype == torch.float32 else blas.dsyrk
    # a row-major n x d array is a column-major d x n one: syrk of it, untransposed, is a^T a
    return torch.from_numpy(syrk(1.0, a.contiguous().numpy().T, trans=0))


def gram_by_product(a: Any) -> Any:
    """a^T a by a matrix product (GPUs, and the check of `gram`)."""
    return a.mT @ a


def root_trace(a: Any, scale: float) -> float:
    """Tr((a^T a / scale)^1/2): the sum of the square roots of the eigenvalues of a^T a / scale,
    from the smaller of a^T a and a a^T (the same nonzero eigenvalues); negative round-off of
    a rank-deficient matrix is taken as 0."""
    import torch

    small = gram(a) if a.shape[0] >= a.shape[1] else gram(a.mT)
    values = torch.linalg.eigvalsh(small, UPLO="U").to(torch.float64) / scale
    return float(values.clamp(min=0).sqrt().sum())


def blocks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(total)."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def numpy(values: Any) -> np.ndarray:
    """A tensor back as a float64 numpy array on the host."""
    return values.detach().to("cpu", dtype=values.dtype).double().numpy()
