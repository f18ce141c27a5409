"""The per-run feature cache: reused when it covers the run's current images with finite values,
extracted again when it does not."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkroom.evals.feature_cache import features_path, read_features, write_features
from darkroom.evals.outputs import image_hashes

PROTOCOL = {"extractor": "tiny", "version": 1}


def test_a_cache_with_nan_in_it_is_extracted_again(make_run, tmp_path):
    run_dir = make_run(tmp_path / "job", "run-a", prompts=["a fox", "a map"],
                       images_per_prompt=2)
    rows = np.array(sorted(image_hashes(run_dir)))
    features = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    path = write_features(run_dir, "tiny", PROTOCOL, rows, features)
    cached = read_features(run_dir, "tiny", PROTOCOL)
    np.testing.assert_array_equal(cached[rows[1]], features[1])

    # the damage itself: one NaN written into the cache file on disk, hashes untouched
    table = pq.read_table(path)
    values = np.asarray(table.column("features").combine_chunks().flatten()).copy()
    values[11] = np.nan
    damaged = table.set_column(2, "features", pa.FixedSizeListArray.from_arrays(
        pa.array(values, pa.float32()), 8))
    pq.write_table(damaged.replace_schema_metadata(table.schema.metadata), path)
    assert read_features(run_dir, "tiny", PROTOCOL) is None

    # non-finite features from an extractor are not kept to be read back
    features[2, 5] = np.inf
    other = {**PROTOCOL, "version": 2}
    assert write_features(run_dir, "tiny", other, rows, features) is None
    assert not features_path(run_dir, "tiny", other).exists()
