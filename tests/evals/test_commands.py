"""`darkroom eval` end to end, and its answers to bad input (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from darkroom.cli import main
from darkroom.evals.extractors import to_float_nchw
from darkroom.evals.metrics.compute import (
    CLASSIFIERS,
    Classifier,
    Context,
    RunScores,
    class_accuracy,
)
from darkroom.evals.scoring import PARTS, ScorePlan
from darkroom.evals.spec import EvalSpec


@pytest.mark.ray
def test_eval_a_run_folder_with_settings_from_job_yaml(ray_session, make_run, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    job_dir = tmp_path / "out" / "digits-job"
    run_dir = make_run(job_dir, "run-dit", model="tiny:dit", classes=[0, 1, 2],
                        images_per_prompt=2)
    (job_dir / "job.yaml").write_text(
        "name: digits-job\neval:\n  metrics: [safety, class_accuracy]\n"
        "tracking: {experiment: from-yaml}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["eval", str(run_dir), "--safety-threshold", "0", "--tracking-uri", uri,
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(captured.out[captured.out.index("[\n"):])
    assert [r["run_id"] for r in results] == ["run-dit"]
    result = results[0]
    assert result["metrics"]["nsfw_rate"] == 1.0  # the flag's threshold over the yaml's default
    # class accuracy is the agreement of the classifier's reading (scores) with the asked label
    import pyarrow.parquet as pq

    from darkroom.platform.data import layout

    asked = layout.read_table(run_dir / layout.IMAGES, ["row_id", "class_label"])
    read = pq.read_table(run_dir / layout.SCORES / "scores.parquet", columns=[
        "row_id", "predicted_label"]).join(asked, "row_id").to_pylist()
    assert len(read) == 6
    agreement = np.mean([int(r["class_label"]) == r["predicted_label"] for r in read])
    assert result["metrics"]["class_accuracy"] == pytest.approx(agreement)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("from-yaml")
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`darkroom.kind` = 'run'")
    assert len(runs) == 1 and runs[0].data.params["image_count"] == "6"


def test_bad_input_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "fdi,safety"]) == 2
    assert "unknown metric `fdi`; did you mean `fid`?" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--reference", str(tmp_path / "nope")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "safety"]) == 2
    assert "no runs to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "fid"]) == 2
    assert "give `reference`" in capsys.readouterr().err


def test_bad_input_from_the_real_command_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "darkroom", "eval", str(tmp_path), "--metrics", "kid",
         "--feature-extractor", "inceptoin", "--reference", "builtin:digits"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "did you mean `inception`?" in done.stderr and "Traceback" not in done.stderr


# -- class accuracy -----------------------------------------------------------------------------


class Brightness:
    """A judge that reads bright images as class 1 and dark ones as class 0."""

    def predict(self, x):
        return (x.mean(dim=(1, 2, 3)) > 0.5).long()


def test_class_accuracy_is_agreement_with_the_requested_label(monkeypatch):
    monkeypatch.setitem(CLASSIFIERS, "brightness", Classifier(lambda weights: Brightness(), 2))
    # one batch can hold images of two sizes (two runs generated at different sizes)
    dark, bright = np.full((8, 8, 3), 20, np.uint8), np.full((16, 16, 3), 230, np.uint8)
    images = [dark, dark, bright, bright, bright]
    labels = np.array([0, 1, 1, 1, None], dtype=object)  # one wrong, one unconditional
    part = PARTS["classifier"](ScorePlan(classifier="brightness"))
    predicted = part(images, {})["predicted_label"]
    assert list(predicted) == [0, 0, 1, 1, 1]
    scores = RunScores("r", {"row_id": np.arange(5), "class_label": labels,
                             "predicted_label": predicted})
    ctx = Context(EvalSpec(classifier="brightness"))
    assert class_accuracy(scores, ctx)["class_accuracy"].value == pytest.approx(3 / 4)
    scores.columns["class_label"] = np.array([0, 7, 1, 1, 1], dtype=object)
    with pytest.raises(Exception, match="outside the `brightness` classifier's 2 classes"):
        class_accuracy(scores, ctx)


def test_digits_class_accuracy_and_fid_against_builtin_digits():
    from darkroom.evals.extractors import load_extractor
    from darkroom.evals.metrics.compute import fid
    from darkroom.evals.metrics.distances import Stats
    from darkroom.platform.zoo.classifier import load_digits_classifier
    from darkroom.platform.zoo.data import digits_dataset

    images, labels = digits_dataset("test")
    part = PARTS["classifier"](ScorePlan(classifier="digits"))
    predicted = part(list(images), {})["predicted_label"]
    direct = load_digits_classifier().predict(to_float_nchw(list(images))).numpy()
    np.testing.assert_array_equal(predicted, direct)
    scores = RunScores("r", {"row_id": np.arange(len(labels)),
                             "class_label": labels.astype(object), "predicted_label": predicted})
    accuracy = class_accuracy(scores, Context(EvalSpec()))["class_accuracy"].value
    assert accuracy == pytest.approx((direct == labels).mean()) and accuracy > 0.9
    extractor = load_extractor("digits")
    all_images, _ = digits_dataset("all")
    reference = Stats.of(extractor(list(all_images)))
    ctx = Context(EvalSpec(feature_extractor="digits"), references={"digits": reference})
    held_out = fid(RunScores("r", {"row_id": labels, "features.digits": extractor(list(images))}),
                   ctx)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    of_noise = fid(RunScores("r", {"row_id": labels, "features.digits": extractor(list(noise))}),
                   ctx)
    assert held_out["fid"].value < of_noise["fid"].value / 10
