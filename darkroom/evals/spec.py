"""The `eval:` and `tracking:` sections of a job file (also built from `darkroom eval` flags).

`EvalSpec` is `EvalCore` plus the settings the registered units add (`clip_model`,
`dinov2_model`, `pickscore_model`, `classifier`, `safety`, ...), so a new scorer's setting is a
key of `eval:` with no line here; metric and extractor names are checked against the registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from darkroom.evals import registry
from darkroom.evals.scorers.safety import SafetySpec
from darkroom.evals.units import FEATURES, Part, Setting
from darkroom.platform.errors import did_you_mean

__all__ = ["BootstrapSpec", "EvalSpec", "ReferenceSpec", "SafetySpec", "TrackingSpec"]


def _listing(names: list[str]) -> str:
    """a, b and c"""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _known(kind: str, name: str, known) -> str:
    if name not in known:
        raise ValueError(f"unknown {kind} `{name}`;{did_you_mean(name, known)}")
    return name


class ReferenceSpec(BaseModel):
    """Real images to compare against: exactly one source."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: str | None = Field(None, description="a built-in dataset, e.g. builtin:digits")
    folder: str | None = Field(None, description="a folder of images")
    parquet: str | None = Field(None, description="a Parquet file or folder with an image column")
    stats: str | None = Field(None, description="precomputed statistics (.npz)")

    @model_validator(mode="after")
    def _exactly_one(self) -> ReferenceSpec:
        given = [k for k in ("dataset", "folder", "parquet", "stats") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of dataset, folder, parquet, stats; got {given or 'none'}"
            )
        return self


class BootstrapSpec(BaseModel):
    """Confidence intervals: resampling the scored images (or prompts) of each run."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    resamples: int = Field(500, ge=0, le=10_000,
                           description="bootstrap resamples per run; 0 turns intervals off")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the resampling")
    level: float = Field(0.95, ge=0.5, le=0.999, description="confidence level of the intervals")


def _metric_names() -> str:
    return ", ".join(registry.metrics())


def _on_configured_features() -> list[str]:
    return [m.name for m in registry.metrics().values() if m.part == Part(FEATURES)]


class EvalCore(BaseModel):
    """The `eval:` keys of evaluation itself; `EvalSpec` adds those of the registered units."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    metrics: list[str] = Field(
        default_factory=lambda: ["fid", "kid", "clip_score", "safety"],
        description=f"registry names: {_metric_names()}",
    )
    feature_extractor: str = Field(
        "inception", description=f"for {', '.join(_on_configured_features())}: "
        f"{', '.join(registry.extractors())}")
    reference: ReferenceSpec | None = Field(None, description="real images for fid/kid")
    backend: Literal["cleanfid", "torchmetrics"] = Field(
        "cleanfid", description="who computes FID/KID from the features"
    )
    weights: str | None = Field(
        None, description="the feature extractor's weights: Inception file or folder, CLIP folder "
        "or hub id, digits classifier folder; default: its usual place",
    )
    kid_subsets: int = Field(100, ge=1, le=10_000, description="KID: number of random subsets")
    kid_subset_size: int = Field(1000, ge=2, le=1_000_000,
                                 description="KID: images per subset (at most all)")
    actors: int = Field(1, ge=1, le=10_000, description="feature-extraction actors")
    gpus_per_actor: float = Field(0.0, ge=0.0, le=64,
                                  description="GPUs per actor; > 0 runs on CUDA")
    batch_size: int = Field(32, ge=1, le=4096, description="images per extraction batch")
    contact_sheet: int = Field(16, ge=1, le=256, description="images on each run's contact sheet")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        known = registry.metrics()
        if not metrics:
            raise ValueError(f"`metrics` is empty; name at least one of {', '.join(known)}")
        problems = []
        for name in metrics:
            try:
                _known("metric", name, known)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"`metrics` lists a name twice: {metrics}")
        return metrics

    @field_validator("feature_extractor")
    @classmethod
    def _known_extractor(cls, name: str) -> str:
        return _known("feature extractor", name, registry.extractors())

    @model_validator(mode="after")
    def _reference_for_distances(self) -> EvalCore:
        # Listed on purpose without real images is a mistake; the default list just skips them.
        wanted = [m for m in self.metrics if registry.metrics()[m].on_features]
        if wanted and self.reference is None and "metrics" in self.model_fields_set:
            raise ValueError(
                f"{_listing(wanted)} compare against real images: give `reference` "
                "(dataset: builtin:digits | folder: PATH | parquet: PATH | stats: FILE.npz)"
            )
        return self


def _field(setting: Setting) -> tuple[Any, Any]:
    """A unit's setting as a pydantic field definition."""
    if setting.field in EvalCore.model_fields:
        raise ValueError(f"setting `{setting.field}` is a key of eval: already")
    annotation = setting.annotation
    if setting.check is not None:
        annotation = Annotated[annotation, AfterValidator(setting.check)]
    if setting.default_factory is not None:
        return annotation, Field(default_factory=setting.default_factory,
                                 description=setting.description)
    return annotation, Field(setting.default, description=setting.description)


EvalSpec = create_model(
    "EvalSpec", __base__=EvalCore, __module__=__name__,
    __doc__="Which metrics to compute on a job's images, and against what.",
    **{s.field: _field(s) for s in registry.settings().values()},
)


class TrackingSpec(BaseModel):
    """Where results are logged in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    experiment: str | None = Field(None, description="MLflow experiment; default: the job name")
    uri: str | None = Field(None, description="tracking URI; default: MLflow's (sqlite:///mlflow.db)")
    grid_prompts: int = Field(8, ge=0, le=64, description="prompts in MLflow's image grid, the "
                              "same for every run of a job, spread over classes or categories")
    grid_samples: int = Field(2, ge=1, le=8, description="images per grid prompt (the UI's step "
                              "slider); a run logs at most grid_prompts x grid_samples images")
    table_rows: int = Field(64, ge=0, le=1000, description="rows of the per-image table with "
                            "images shown in MLflow; every row is also in images_table.parquet")
