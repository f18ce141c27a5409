"""The `classifier` part and the `class_accuracy` metric: a classifier reads the class of each
image of a class-conditional run (`predicted_label`), and the metric is the share of images read
as the class they were asked for. `eval.classifier` names the judge (`CLASSIFIERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from darkroom.evals.metrics.base import (
    UNIT,
    Context,
    RunScores,
    Statistic,
    Unavailable,
    mean_statistic,
)
from darkroom.evals.scorers.images import per_size, to_float_nchw
from darkroom.evals.units import Metric, Part, PartFn, PlannedPart, Scorer, Setting
from darkroom.platform.errors import did_you_mean


@dataclass(frozen=True)
class Classifier:
    """A judge for class_accuracy: `load(weights)` gives a module with `predict(float NCHW)`."""

    load: Callable[[str | None], Any]
    num_classes: int


def _load_digits(weights: str | None):
    from darkroom.evals.scorers.digits import load_digits

    return load_digits(weights)


CLASSIFIERS: dict[str, Classifier] = {"digits": Classifier(_load_digits, 10)}


def _known(name: str) -> str:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier `{name}`;{did_you_mean(name, CLASSIFIERS)}")
    return name


CLASSIFIER = Setting("classifier", "the judge of class_accuracy", "digits", check=_known)


def _build(planned: PlannedPart, device: str) -> PartFn:
    model = CLASSIFIERS[planned.options["classifier"]].load(None)
    if hasattr(model, "to"):
        model.to(device)

    @per_size
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return model.predict(to_float_nchw(images).to(device)).cpu().numpy()

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"predicted_label": predict(images).astype(np.int64)}

    return part


def class_accuracy(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Share of class-conditional images the classifier reads as the requested class."""
    labels = scores.column("class_label")
    asked = np.array([label is not None and not (isinstance(label, float) and np.isnan(label))
                      for label in labels])
    if not asked.any():
        raise Unavailable("not a class-conditional run (no class_label)")
    wanted = np.asarray(labels[asked], dtype=np.int64)
    classes = CLASSIFIERS[ctx.spec.classifier].num_classes
    if wanted.min() < 0 or wanted.max() >= classes:
        raise Unavailable(f"class labels {sorted(set(wanted.tolist()))[:8]} are outside the "
                          f"`{ctx.spec.classifier}` classifier's {classes} classes")
    predicted = np.asarray(scores.column("predicted_label"), dtype=np.int64)
    right = np.zeros(scores.count)
    right[asked] = predicted[asked] == wanted
    return {"class_accuracy": mean_statistic(right, asked, UNIT)}


UNITS = (
    Scorer("classifier", "classifier", _build, ("predicted_label",),
           "the class a classifier reads in each image", settings=(CLASSIFIER,)),
    Metric("class_accuracy", "class_accuracy", True, Part("classifier"),
           "share of images read as the requested class", class_accuracy),
)
