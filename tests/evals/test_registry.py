"""The registries: what the units declare is what the eval spec, `darkroom schema`, `darkroom eval
--help`, the scoring plan and the saved scores use; a new per-image metric is one module."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from darkroom.evals import registry
from darkroom.evals.scorers.plan import plan_parts
from darkroom.evals.spec import EvalSpec
from darkroom.evals.units import FEATURES, Part
from darkroom.platform.errors import UserError


def test_every_setting_is_a_key_of_eval_with_its_description():
    settings = registry.settings()
    assert {"clip_model", "dinov2_model", "pickscore_model", "classifier", "safety"} <= set(
        settings)
    for field, setting in settings.items():
        assert EvalSpec.model_fields[field].description == setting.description
    # a job file's keys validate as they always did
    spec = EvalSpec(clip_model="/c", dinov2_model="/d", pickscore_model="/p",
                    classifier="digits", safety={"checker": "nudenet", "threshold": 0.2})
    assert (spec.clip_model, spec.dinov2_model, spec.pickscore_model) == ("/c", "/d", "/p")
    assert spec.safety.threshold == 0.2


def test_metric_and_extractor_names_and_directions_come_from_the_registry():
    metrics = registry.metrics()
    assert list(metrics)[:2] == ["fid", "kid"]  # corpus metrics lead every listing
    assert {"clip_score", "safety", "class_accuracy", "pickscore"} <= set(metrics)
    assert set(registry.extractors()) == {"inception", "clip", "dinov2", "digits", "tiny"}
    assert metrics["fid"].part_for(EvalSpec(feature_extractor="tiny")) == Part(FEATURES, "tiny")
    assert metrics["cmmd"].part_for(EvalSpec()) == Part(FEATURES, "clip")
    for name in metrics:
        assert name in EvalSpec.model_fields["metrics"].description
    with pytest.raises(UserError, match="did you mean `fid`"):
        registry.metric("fdi")
    with pytest.raises(UserError, match="did you mean `clip`"):
        registry.scorer("clp")


def test_the_plan_has_each_part_with_its_weights_and_settings():
    spec = EvalSpec(metrics=["fid", "cmmd", "clip_score", "safety", "pickscore"],
                    feature_extractor="tiny", reference={"dataset": "builtin:digits"},
                    clip_model="/nowhere/clip", pickscore_model="/nowhere/pick",
                    safety={"threshold": 0.3})
    plan, skipped = plan_parts(spec)
    parts = {p.key: p for p in plan.parts}
    assert set(parts) == {Part(FEATURES, "tiny"), Part("clip"), Part("safety"),
                          Part("pickscore")}
    assert parts[Part("clip")].weights == "/nowhere/clip"
    assert parts[Part("pickscore")].weights == "/nowhere/pick"
    assert parts[Part("safety")].options["safety"]["threshold"] == 0.3
    # the clip extractor is checked on the driver: a folder without config.json is missing
    assert "config.json" in skipped["cmmd"] and set(skipped) == {"cmmd"}


def test_a_name_declared_twice_is_refused(tmp_path, monkeypatch):
    (tmp_path / "twice.py").write_text(textwrap.dedent("""
        from darkroom.evals.units import Metric, Part
        UNITS = (Metric("fid", "fid", False, Part("features"), "again", lambda s, c: {}),)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, "twice"))
    with pytest.raises(ValueError, match="metric `fid` is declared twice"):
        registry.registry.__wrapped__()


NEW_SCORER = '''
"""A per-image metric as a new module: mean brightness, judged by a "model" in a folder."""

from pathlib import Path

import numpy as np

from darkroom.evals.metrics.base import mean_statistic
from darkroom.evals.units import Metric, Part, Scorer, WeightsMissing, weights_setting

BRIGHTNESS_MODEL = weights_setting("brightness_model", "/no/such/folder",
                                   "the brightness judge: a local folder")


def build(planned, device):
    if not Path(planned.weights).is_dir():
        raise WeightsMissing(f"no brightness judge in {planned.weights}")
    return lambda images, batch: {"brightness": np.array([i.mean() / 255 for i in images])}


UNITS = (
    Scorer("brightness", "detector", build, ("brightness",), "mean brightness",
           weights=BRIGHTNESS_MODEL),
    Metric("brightness", "brightness", True, Part("brightness"), "mean brightness, 0-1",
           lambda scores, ctx: {"brightness": mean_statistic(scores.column("brightness"))}),
)
'''

PROBE = '''
import contextlib, io, json, sys
import numpy as np
import darkroom.evals.scorers as scorers
scorers.__path__.append(sys.argv[1])
from darkroom.cli import main
from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import HIGHER_IS_BETTER, statistics
from darkroom.evals.results import write_scores
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.plan import plan_parts
from darkroom.evals.spec import EvalSpec

spec = EvalSpec(metrics=["brightness", "safety"], brightness_model=sys.argv[1])
plan, skipped = plan_parts(spec)
planned = next(p for p in plan.parts if p.scorer == "brightness")
images = [np.full((4, 4, 3), 51, np.uint8), np.full((4, 4, 3), 153, np.uint8)]
columns = {"row_id": np.array(["a", "b"], dtype=object),
           **build_part(planned)(images, {})}
stats, missing = statistics(RunScores("r", columns), Context(spec), ["brightness"])
write_scores(__import__("pathlib").Path(sys.argv[2]), RunScores("r", columns))
with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
    main(["eval", "--help"])
with contextlib.redirect_stdout(io.StringIO()) as schema:
    main(["schema"])
print(json.dumps({
    "weights": planned.weights, "value": stats["brightness"].value, "missing": missing,
    "direction": HIGHER_IS_BETTER["brightness"], "help": help_text.getvalue(),
    "schema": json.loads(schema.getvalue())["$defs"]["EvalSpec"]["properties"],
    "metrics": EvalSpec.model_fields["metrics"].description,
}))
'''


def test_a_new_per_image_metric_is_one_module(tmp_path):
    """A module dropped into the scorers package adds its setting to `eval:` (and the schema),
    its flag and metric to `darkroom eval --help`, its part to the plan, its value to the
    metrics and its column to the saved scores, with no other file changed."""
    (tmp_path / "brightness.py").write_text(NEW_SCORER)
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["weights"] == str(tmp_path)
    assert found["value"] == pytest.approx((0.2 + 0.6) / 2) and found["missing"] == {}
    assert found["direction"] is True
    assert "--brightness-model" in found["help"] and "brightness" in found["help"]
    assert found["schema"]["brightness_model"]["description"] == (
        "the brightness judge: a local folder")
    assert "brightness" in found["metrics"]
    import pyarrow.parquet as pq

    saved = pq.read_table(tmp_path / "run" / "scores" / "scores.parquet")
    assert saved.column("brightness").to_pylist() == pytest.approx([0.2, 0.6])
