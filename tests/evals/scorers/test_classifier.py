"""Class accuracy: the classifier part reads each image's class; the metric is the share read as
the class asked for."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.classifier import CLASSIFIERS, Classifier, class_accuracy
from darkroom.evals.scorers.images import to_float_nchw
from darkroom.evals.spec import EvalSpec
from darkroom.evals.units import PlannedPart


def _part(classifier: str):
    return build_part(PlannedPart(scorer="classifier", options={"classifier": classifier}))


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
    part = _part("brightness")
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
    from darkroom.evals.metrics.corpus import fid
    from darkroom.evals.metrics.distances import Stats
    from darkroom.evals.scorers.features import load_extractor
    from darkroom.platform.zoo.classifier import load_digits_classifier
    from darkroom.platform.zoo.data import digits_dataset

    images, labels = digits_dataset("test")
    part = _part("digits")
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
