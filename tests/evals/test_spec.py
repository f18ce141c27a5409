"""The eval: section: registry names checked with "did you mean", clear errors by field."""

from __future__ import annotations

import pytest

from darkroom.evals.spec import EvalSpec
from darkroom.platform.config import SpecError, validate


def _error(**fields) -> str:
    with pytest.raises(SpecError) as info:
        validate(EvalSpec, fields, "eval")
    return str(info.value)


def test_defaults_need_no_reference():
    spec = EvalSpec()
    assert spec.metrics == ["fid", "kid", "clip_score", "safety"]
    assert spec.backend == "cleanfid" and spec.safety.checker == "nudenet"


def test_every_bad_name_is_reported_with_a_suggestion():
    message = _error(metrics=["fdi", "clip_scor"], feature_extractor="incepton",
                     safety={"checker": "nudnet"}, classifier="digit")
    assert "metrics: unknown metric `fdi`; did you mean `fid`?" in message
    assert "did you mean `clip_score`?" in message
    assert "feature_extractor: unknown feature extractor `incepton`; did you mean `inception`?" \
        in message
    assert "safety.checker: unknown safety checker `nudnet`; did you mean `nudenet`?" in message
    assert "classifier: unknown classifier `digit`; did you mean `digits`?" in message


def test_listed_distances_need_a_reference():
    assert "fid and kid compare against real images: give `reference`" in _error(
        metrics=["fid", "kid"])
    assert EvalSpec(metrics=["fid"], reference={"dataset": "builtin:digits"}).reference.dataset


def test_values_out_of_range_and_unknown_fields():
    assert "safety.threshold" in _error(safety={"threshold": 1.5})
    assert "backend" in _error(backend="scipy")
    assert "refrence: unknown key `refrence`; did you mean `reference`?" in _error(
        refrence={"folder": "x"})
    assert "metrics: `metrics` is empty" in _error(metrics=[])
    assert "exactly one of dataset, folder, parquet, stats" in _error(
        reference={"folder": "a", "stats": "b.npz"})
