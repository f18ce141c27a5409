"""Per-run feature cache: `<run>/scores/features-<extractor>-<protocol hash>.parquet`.

One row per image (row_id, image_sha256, features). A cache file is reused when every current
image row of the run is in it with the same image hash (or was left out as unreadable last
time) and every value in it is finite, so adding a metric, evaluating again or comparing runs
never extracts features twice; a changed extractor (network, weights, preprocessing) has another
protocol hash and another file. A damaged cache (NaN or infinite values) is extracted again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals.outputs import image_hashes
from darkroom.evals.results import left_out, write_atomic
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location

PREFIX = "features-"


def protocol_hash(protocol: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the protocol as sorted-key JSON."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def features_path(run_dir: Location, extractor: str, protocol: dict[str, Any]) -> Location:
    """Where a run's features under one extractor protocol are kept (a path or a URI)."""
    return run_dir / layout.SCORES / f"{PREFIX}{extractor}-{protocol_hash(protocol)}.parquet"


def write_features(run_dir: Location, extractor: str, protocol: dict[str, Any],
                   row_ids: np.ndarray, features: np.ndarray) -> Location | None:
    """Keep a run's features (rows in `row_ids` order) with each row's image hash; features
    that are not all finite are not kept (None)."""
    features = np.asarray(features, np.float32)
    if not np.isfinite(features).all():
        return None
    hashes = image_hashes(run_dir)
    flat = pa.array(features.reshape(-1), pa.float32())
    table = pa.table({
        "row_id": pa.array([str(r) for r in row_ids], pa.string()),
        "image_sha256": pa.array([hashes.get(str(r)) for r in row_ids], pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1]),
    }).replace_schema_metadata({"darkroom.protocol": json.dumps(protocol, sort_keys=True)})
    target = features_path(run_dir, extractor, protocol)
    write_atomic(table, target)
    return target


def read_features(run_dir: Location, extractor: str, protocol: dict[str, Any],
                  hashes: dict[str, str] | None = None) -> dict[str, np.ndarray] | None:
    """row_id -> features from the cache, or None when the cache does not cover every current
    image row of the run (`hashes`: row_id -> image_sha256, read from the images if not given)."""
    path = features_path(run_dir, extractor, protocol)
    if not storage.exists(path):
        return None
    hashes = image_hashes(run_dir) if hashes is None else hashes
    try:
        table = storage.read_parquet(path)
    except Exception:  # an unreadable cache is a missing cache
        return None
    ids = table.column("row_id").to_pylist()
    cached = dict(zip(ids, table.column("image_sha256").to_pylist(), strict=True))
    skipped = left_out(run_dir)
    if any(cached.get(row) != sha and row not in skipped for row, sha in hashes.items()):
        return None
    values = np.asarray(table.column("features").combine_chunks().flatten(), np.float32)
    if not np.isfinite(values).all():  # a damaged cache: extract again
        return None
    values = values.reshape(len(ids), -1)
    return {row: values[i] for i, row in enumerate(ids)}


def align(cache: dict[str, np.ndarray], row_ids: np.ndarray) -> np.ndarray | None:
    """The cached features in `row_ids` order, or None if a row is not cached."""
    try:
        return np.stack([cache[str(r)] for r in row_ids]) if len(row_ids) else None
    except KeyError:
        return None
