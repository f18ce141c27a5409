"""What the evaluation's extension points declare, so that the eval spec, the command line, the
scoring plan and the actors all read one declaration.

- `Setting`: a key of the `eval:` section that a unit adds (where its weights are, or a section
  of its own such as `safety:`), with its default and description.
- `Part`: the key of a per-image part, a pass on the scoring actors that adds per-image columns:
  a scorer's name and, for the `features` scorer, the feature extractor.
- `Scorer`: a per-image part (features, CLIP score, safety, classifier, preference; judges,
  reward models and detectors alike): its kind, its weights setting, its other settings, how an
  actor builds it and the columns it adds.
- `Extractor`: a feature extractor, which the `features` scorer runs for the corpus metrics.
- `Metric`: the part it needs, its direction, the MLflow key it is ranked by and its math.

A module of `darkroom.evals.scorers` (and `darkroom.evals.metrics.corpus`) lists what it declares
in `UNITS`; `darkroom.evals.registry` collects them. A new per-image metric is one such module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from darkroom.platform.errors import UserError

FEATURES = "features"  # the scorer that runs feature extractors
ERROR_PREFIX = "error_"  # an actor's column `error_<part>`: why the part did not load there

# A built part: a batch of decoded images (uint8 HxWx3) and the batch's other columns (prompt,
# class_label, ...) in; its per-image columns out, one value per image.
PartFn = Callable[[list[np.ndarray], Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class WeightsMissing(UserError):
    """A part's or an extractor's weights are not on this machine; the message says what to put
    where."""


@dataclass(frozen=True)
class Setting:
    """A key of the `eval:` section that a unit adds. `check` validates a value (returns it, or
    raises ValueError naming the fix); `flag`: `darkroom eval` takes it as `--<field>` too."""

    field: str
    description: str
    default: Any = None
    annotation: Any = str
    default_factory: Callable[[], Any] | None = None
    check: Callable[[Any], Any] | None = None
    flag: bool = False


def weights_setting(field: str, default: str, description: str) -> Setting:
    """A setting that says where a part's weights are (a local folder or a hub id), also a flag
    of `darkroom eval`."""
    return Setting(field, description, default, str, flag=True)


@dataclass(frozen=True, order=True)
class Part:
    """The key of a per-image part: a scorer, and for `features` the extractor (None in a
    metric's declaration: the configured `feature_extractor`)."""

    scorer: str
    extractor: str | None = None

    def __str__(self) -> str:
        return f"{self.scorer}.{self.extractor}" if self.extractor else self.scorer


def error_column(part: Part) -> str:
    """The column in which actors report that `part` did not load."""
    return f"{ERROR_PREFIX}{part}"


class PlannedPart(BaseModel):
    """One part as the scoring actors build it: its key, weights and the values of its other
    settings (plain data, so a plan travels to the actors as a dict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scorer: str
    extractor: str | None = None
    weights: str | None = None
    options: dict[str, Any] = {}

    @property
    def key(self) -> Part:
        """The part's key."""
        return Part(self.scorer, self.extractor)


@dataclass(frozen=True)
class Scorer:
    """A per-image part.

    `build(planned, device)` loads it on an actor (weights missing: `WeightsMissing`) and gives
    the function that scores a batch; `columns` are the per-image columns it adds (saved in the
    run's scores, except features). `weights` is the setting that names its weights;
    `resolve_weights(spec, part)`, where given, decides them instead. `settings` are its other
    keys of `eval:`; their values reach `build` as `planned.options`. `check(planned, spec)`
    says on the driver, before any image is read, why the part cannot run (or None).
    `protocol` holds constants recorded in the eval protocol. `cache(planned)`, where given, is
    the identity of what the part answers (its model, what it is asked): its columns are then
    kept per row (`score_cache.py`) and only rows whose image or prompt changed are scored again;
    such a part marks a row it could not score with NaN, and must take a batch of no images.
    """

    name: str
    kind: str  # features | clip | safety | classifier | preference | judge | reward | detector
    build: Callable[[PlannedPart, str], PartFn]
    columns: tuple[str, ...]
    description: str
    weights: Setting | None = None
    settings: tuple[Setting, ...] = ()
    resolve_weights: Callable[[Any, Part], str | None] | None = None
    check: Callable[[PlannedPart, Any], str | None] | None = None
    protocol: Mapping[str, Any] = field(default_factory=dict)
    cache: Callable[[PlannedPart], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Extractor:
    """A feature extractor: `build(weights, device)` loads it (a `FeatureExtractor`);
    `protocol(weights)` and `check(weights)` answer cheaply, without loading it; `weights` is
    the setting its weights come from when it is not the configured extractor (that one takes
    `eval.weights`)."""

    name: str
    build: Callable[[str | None, str], Any]
    protocol: Callable[[str | None], dict[str, Any]]
    description: str
    check: Callable[[str | None], str | None] = lambda weights: None
    weights: Setting | None = None


@dataclass(frozen=True)
class Metric:
    """A metric: its direction, the part it needs, and its math. `compute(scores, ctx)` gives a
    `Statistic` per MLflow key, `key` among them; `other_keys` are the other keys it gives,
    with their direction (higher is better)."""

    name: str
    key: str  # the MLflow metric it is ranked by
    higher_is_better: bool
    part: Part
    description: str
    compute: Callable[..., dict[str, Any]]
    other_keys: Mapping[str, bool] = field(default_factory=dict)

    @property
    def on_features(self) -> bool:
        """Whether it compares a run's features with the reference's."""
        return self.part.scorer == FEATURES

    def part_for(self, spec: Any) -> Part:
        """The part it needs under these eval settings (its extractor filled in)."""
        if self.on_features and self.part.extractor is None:
            return Part(FEATURES, spec.feature_extractor)
        return self.part
