"""Reference statistics: features of real images, cached on disk and reused.

Sources: a folder of images, a Parquet of images (column `image`, encoded bytes), a built-in
dataset (`builtin:digits`), or a precomputed `.npz` (`mu`, `sigma`, optionally `features`, as
clean-fid writes them). A cache file is keyed by the extractor's protocol (network, weights hash,
resize), the sample count and a SHA-256 of the image bytes, so changing any of them recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals.metrics.distances import Stats
from darkroom.evals.scorers.features import extractor_protocol
from darkroom.evals.spec import ReferenceSpec
from darkroom.platform.errors import UserError, did_you_mean

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _digits_images() -> list[bytes]:
    from darkroom.platform.data.records import encode_png
    from darkroom.platform.zoo.data import digits_dataset

    images, _ = digits_dataset("all")
    return [encode_png(image) for image in images]


DATASETS: dict[str, Callable[[], list[bytes]]] = {"builtin:digits": _digits_images}


@dataclass
class Reference:
    """Reference statistics with where they came from (`info`) and any warnings about them."""

    stats: Stats
    info: dict[str, Any]  # source, count, fingerprint, protocol, cache file, cached
    warnings: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """Where computed reference statistics are cached: `reference/` under the cache root."""
    from darkroom.platform.models.names import cache_root

    return cache_root() / "reference"


def load_images(spec: ReferenceSpec) -> tuple[str, list[bytes]]:
    """(a description of the source, its encoded images in a fixed order)."""
    if spec.dataset:
        if spec.dataset not in DATASETS:
            raise UserError(f"reference.dataset: unknown dataset `{spec.dataset}`;"
                            f"{did_you_mean(spec.dataset, DATASETS)}")
        return spec.dataset, DATASETS[spec.dataset]()
    if spec.folder:
        folder = Path(spec.folder).expanduser()
        if not folder.is_dir():
            raise UserError(f"reference.folder: `{spec.folder}` is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return str(folder.resolve()), [p.read_bytes() for p in files]
    path = Path(spec.parquet).expanduser()
    if not path.exists():
        raise UserError(f"reference.parquet: `{spec.parquet}` does not exist")
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    tables = [pq.read_table(f) for f in files]
    if not tables or "image" not in tables[0].column_names:
        raise UserError(f"reference.parquet: `{spec.parquet}` has no `image` column of "
                        "encoded images")
    images = [b for t in tables for b in t.column("image").to_pylist() if b is not None]
    return str(path.resolve()), images


def fingerprint(images: list[bytes]) -> str:
    """SHA-256 hex of the images' bytes in order, each prefixed with its length."""
    digest = hashlib.sha256()
    for data in images:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def load_npz(path: Path) -> tuple[Stats, dict[str, Any]]:
    """Statistics saved as .npz (mu, sigma; features, count and info when there are)."""
    with np.load(path, allow_pickle=False) as npz:
        if "mu" not in npz or "sigma" not in npz:
            raise UserError(f"reference.stats: `{path}` needs arrays `mu` and `sigma`, "
                            f"has {sorted(npz.files)}")
        features = npz["features"].astype(np.float64) if "features" in npz else None
        count = int(npz["count"]) if "count" in npz else (len(features) if features is not None
                                                         else 0)
        info = json.loads(str(npz["info"])) if "info" in npz else {}
        stats = Stats(npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64), count,
                      features)
    return stats, info


def _save_npz(path: Path, stats: Stats, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".stats-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(staging, mu=stats.mu, sigma=stats.sigma, count=stats.count,
                 features=stats.features.astype(np.float32), info=json.dumps(info))
        os.replace(staging, path)  # readers never see half a file
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def reference_stats(spec: ReferenceSpec, extractor: str, weights: str | None,
                    extract: Callable[[pa.Table], np.ndarray],
                    folder: Path | None = None) -> Reference:
    """The reference statistics for `spec` under `extractor`, from the cache when they are there.

    `extract` turns a table with an `image` column into features (N x D), in row order.
    """
    if spec.stats:
        path = Path(spec.stats).expanduser()
        if not path.is_file():
            raise UserError(f"reference.stats: `{spec.stats}` does not exist")
        stats, info = load_npz(path)
        info = {**info, "source": str(path.resolve()), "count": stats.count, "cached": True}
        return Reference(stats, info, _count_warnings(stats, info))
    source, images = load_images(spec)
    if len(images) < 2:
        raise UserError(f"reference `{source}` holds {len(images)} image(s); FID and KID need "
                        f"at least 2 (images: {', '.join(sorted(IMAGE_SUFFIXES))})")
    protocol = extractor_protocol(extractor, weights)
    data = fingerprint(images)
    key = hashlib.sha256(json.dumps({"protocol": protocol, "data": data, "count": len(images)},
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = (folder or cache_dir()) / f"{extractor}-{key}.npz"
    info = {"source": source, "count": len(images), "fingerprint": data, "protocol": protocol,
            "cache": str(path)}
    if path.is_file():
        stats, _ = load_npz(path)
        info["cached"] = True
    else:
        features = extract(pa.table({"image": pa.array(images, pa.binary())}))
        stats = Stats.of(features)
        _save_npz(path, stats, info)
        info["cached"] = False
    return Reference(stats, info, _count_warnings(stats, info))


def _count_warnings(stats: Stats, info: dict[str, Any]) -> list[str]:
    dims = stats.mu.shape[0]
    if stats.count and stats.count < dims:
        return [f"reference `{info['source']}` has {stats.count} images for {dims}-d features: "
                "its covariance is rank-deficient and FID from it is unreliable; use at least "
                f"{dims} images (ideally 10x that)"]
    return []
