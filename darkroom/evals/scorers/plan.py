"""The scoring plan: which per-image parts the actors run for an eval spec's metrics, each with
its weights and the values of its settings, and which metrics are known to be missing (with the
reason) before any image is read. Everything here comes from the registry: a new scorer needs no
line here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from darkroom.evals import registry
from darkroom.evals.units import FEATURES, Part, PlannedPart


class ScorePlan(BaseModel):
    """What the actors compute: the parts, and the torch device they run on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parts: tuple[PlannedPart, ...] = ()
    device: str = "cpu"  # "cuda" on actors that hold a GPU

    @classmethod
    def of_features(cls, extractors: Mapping[str, str | None], device: str = "cpu") -> ScorePlan:
        """A plan that only extracts features (extractor name -> its weights)."""
        return cls(parts=tuple(PlannedPart(scorer=FEATURES, extractor=name, weights=weights)
                               for name, weights in sorted(extractors.items())), device=device)

    def keys(self) -> list[Part]:
        """The parts this plan runs."""
        return [p.key for p in self.parts]

    def only(self, keys: Iterable[Part]) -> ScorePlan:
        """The same plan with only the given parts."""
        keep = set(keys)
        return ScorePlan(parts=tuple(p for p in self.parts if p.key in keep), device=self.device)

    def features(self) -> dict[str, str | None]:
        """The feature extractors this plan runs, with their weights."""
        return {p.extractor: p.weights for p in self.parts if p.scorer == FEATURES}


def metrics_needing(spec: Any, part: Part) -> list[str]:
    """The spec's metrics that need `part`."""
    return [m for m in spec.metrics if registry.metrics()[m].part_for(spec) == part]


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def planned_part(spec: Any, part: Part) -> PlannedPart:
    """`part` as the actors build it under these eval settings."""
    scorer = registry.scorer(part.scorer)
    if scorer.resolve_weights is not None:
        weights = scorer.resolve_weights(spec, part)
    else:
        weights = getattr(spec, scorer.weights.field) if scorer.weights else None
    return PlannedPart(scorer=part.scorer, extractor=part.extractor, weights=weights,
                       options={s.field: _plain(getattr(spec, s.field)) for s in scorer.settings})


def plan_parts(spec: Any) -> tuple[ScorePlan, dict[str, str]]:
    """The parts the spec's metrics need, and the metrics already known to be missing (and
    why): those whose part says on the driver that it cannot run here."""
    wanted = sorted({registry.metrics()[m].part_for(spec) for m in spec.metrics})
    parts, skipped = [], {}
    for part in wanted:
        planned = planned_part(spec, part)
        check = registry.scorer(part.scorer).check
        reason = check(planned, spec) if check else None
        if reason:
            skipped.update({m: reason for m in metrics_needing(spec, part)})
        else:
            parts.append(planned)
    device = "cuda" if spec.gpus_per_actor > 0 else "cpu"
    return ScorePlan(parts=tuple(parts), device=device), skipped


def setting_values(spec: Any) -> dict[str, Any]:
    """The values of every setting the units add, and their constants: what the eval protocol
    records about the parts."""
    values = {field: _plain(getattr(spec, field)) for field in registry.settings()}
    for scorer in registry.scorers().values():
        values.update(scorer.protocol)
    return values
