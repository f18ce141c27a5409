"""Reference statistics: every source, a cache keyed by protocol and data, warnings on size."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from darkroom.evals.metrics.base import Context, RunScores, Unavailable
from darkroom.evals.metrics.corpus import kid
from darkroom.evals.metrics.distances import Stats
from darkroom.evals.reference import reference_stats
from darkroom.evals.scorers.features import load_extractor
from darkroom.evals.spec import EvalSpec, ReferenceSpec
from darkroom.platform.data.records import decode_png, encode_png
from darkroom.platform.errors import UserError


class CountingExtract:
    """The `extract` callable the runner passes (there: Ray actors), done in process."""

    def __init__(self) -> None:
        self.extractor = load_extractor("tiny")
        self.calls = 0

    def __call__(self, table: pa.Table) -> np.ndarray:
        self.calls += 1
        return self.extractor([decode_png(b) for b in table.column("image").to_pylist()])


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def test_folder_is_cached_and_recomputed_when_the_data_changes(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for i, image in enumerate(_images(20)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    extract, cache = CountingExtract(), tmp_path / "cache"
    first = reference_stats(ReferenceSpec(folder=str(folder)), "tiny", None, extract, cache)
    again = reference_stats(ReferenceSpec(folder=str(folder)), "tiny", None, extract, cache)
    assert extract.calls == 1 and not first.info["cached"] and again.info["cached"]
    np.testing.assert_allclose(again.stats.sigma, first.stats.sigma)
    np.testing.assert_allclose(again.stats.features, first.stats.features)
    assert first.info["count"] == 20 and first.info["protocol"]["extractor"] == "tiny"
    expected = Stats.of(extract.extractor(
        [np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]))
    np.testing.assert_allclose(first.stats.mu, expected.mu, rtol=1e-6)
    Image.fromarray(_images(1, seed=9)[0]).save(folder / "20.png")  # one more image
    third = reference_stats(ReferenceSpec(folder=str(folder)), "tiny", None, extract, cache)
    assert extract.calls == 2 and third.info["count"] == 21
    assert third.info["fingerprint"] != first.info["fingerprint"]
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob(".*"))


def test_parquet_and_builtin_sources_and_small_sets_warn(tmp_path):
    path = tmp_path / "real.parquet"
    pq.write_table(pa.table({"image": [encode_png(i) for i in _images(8)]}), path)
    extract = CountingExtract()
    ref = reference_stats(ReferenceSpec(parquet=str(path)), "tiny", None, extract, tmp_path)
    assert ref.info["count"] == 8
    assert ref.warnings and "8 images for 16-d features" in ref.warnings[0]
    digits = reference_stats(ReferenceSpec(dataset="builtin:digits"), "tiny", None, extract,
                             tmp_path)
    assert digits.info["count"] == 1797 and not digits.warnings
    with pytest.raises(UserError, match="did you mean `builtin:digits`"):
        reference_stats(ReferenceSpec(dataset="builtin:digit"), "tiny", None, extract, tmp_path)
    with pytest.raises(UserError, match="holds 0 image"):
        (tmp_path / "empty").mkdir()
        reference_stats(ReferenceSpec(folder=str(tmp_path / "empty")), "tiny", None, extract,
                        tmp_path)


def test_stats_file_with_only_moments_gives_fid_but_not_kid(tmp_path):
    features = CountingExtract()(
        pa.table({"image": [encode_png(i) for i in _images(30)]}))
    path = tmp_path / "stats.npz"
    np.savez(path, mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    ref = reference_stats(ReferenceSpec(stats=str(path)), "tiny", None, CountingExtract())
    assert ref.stats.features is None
    scores = RunScores("r", {"row_id": np.arange(30), "features.tiny": features})
    ctx = Context(EvalSpec(feature_extractor="tiny"), references={"tiny": ref.stats})
    from darkroom.evals.metrics.corpus import fid

    assert abs(fid(scores, ctx)["fid"].value) < 1e-6
    with pytest.raises(Unavailable, match="KID needs the reference features"):
        kid(scores, ctx)
    np.savez(tmp_path / "bad.npz", mean=features.mean(0))
    with pytest.raises(UserError, match="needs arrays `mu` and `sigma`"):
        reference_stats(ReferenceSpec(stats=str(tmp_path / "bad.npz")), "tiny", None,
                        CountingExtract())
