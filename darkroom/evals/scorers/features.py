"""The `features` part: one feature extractor's features per image, for the corpus metrics (FID,
KID, CMMD, precision/recall, ...). A run gets one part per extractor its metrics need, keyed
`Part("features", <extractor>)`, adding the column `features.<extractor>`.

An extractor maps uint8 HxWx3 images to one float32 row each and records its protocol (network,
weights identity, resize), so that statistics made under one protocol are never compared with
features of another. Extractors are registered with their model family: `inception`, `clip`,
`dinov2`, `digits`, `tiny`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkroom.evals import registry
from darkroom.evals.metrics.base import feature_column
from darkroom.evals.units import FEATURES, PartFn, PlannedPart, Scorer


@dataclass
class FeatureExtractor:
    """A loaded extractor: `fn` maps a batch of uint8 HxWx3 images to float32 N x num_features."""

    name: str
    num_features: int
    protocol: dict[str, Any]
    fn: Callable[[Sequence[np.ndarray]], np.ndarray] = field(repr=False)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of a batch as float32 N x num_features; no images give 0 rows."""
        if not len(images):
            return np.zeros((0, self.num_features), np.float32)
        return np.asarray(self.fn(images), dtype=np.float32).reshape(len(images), -1)


def load_extractor(name: str, weights: str | None = None, device: str = "cpu") -> FeatureExtractor:
    """Build a registered extractor; missing weights raise `WeightsMissing` with the fix."""
    return registry.extractor(name).build(weights, device)


def check_extractor(name: str, weights: str | None = None) -> str | None:
    """Why the extractor cannot be built here (missing weights), or None when it looks fine."""
    return registry.extractor(name).check(weights)


def extractor_protocol(name: str, weights: str | None = None) -> dict[str, Any]:
    """The extractor's protocol (network, weights identity, resize); its weights must exist."""
    return registry.extractor(name).protocol(weights)


def extractor_weights(spec: Any, extractor: str) -> str | None:
    """The weights an extractor runs with: `eval.weights` for the configured feature extractor,
    else the extractor's own setting (CLIP: `clip_model`, DINOv2: `dinov2_model`), else None."""
    if extractor == spec.feature_extractor and spec.weights:
        return spec.weights
    setting = registry.extractor(extractor).weights
    return getattr(spec, setting.field) if setting else None


def _build(planned: PlannedPart, device: str) -> PartFn:
    extractor = load_extractor(planned.extractor, planned.weights, device)
    column = feature_column(planned.extractor)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {column: extractor(images)}

    return part


def _check(planned: PlannedPart, spec: Any) -> str | None:
    reason = check_extractor(planned.extractor, planned.weights)
    if reason is None and spec.reference is None:
        reason = "no reference images: set eval.reference (or --reference)"
    return reason


UNITS = (
    Scorer(FEATURES, "features", _build, ("features.<extractor>",),
           "a feature extractor's features per image, for the corpus metrics",
           resolve_weights=lambda spec, part: extractor_weights(spec, part.extractor),
           check=_check),
)
