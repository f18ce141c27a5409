"""The `eval:` and `tracking:` sections of a job file (also built from `darkroom eval` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from darkroom.platform.errors import did_you_mean


def _listing(names: list[str]) -> str:
    """a, b and c"""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _known(kind: str, name: str, registry) -> str:
    if name not in registry:
        raise ValueError(f"unknown {kind} `{name}`;{did_you_mean(name, registry)}")
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


class SafetySpec(BaseModel):
    """The safety checker of the `safety` metric."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    checker: str = Field("nudenet", description="nudenet (offline) or sd (needs its weights)")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="flag at or above this NSFW score; default 0.5"
    )
    weights: str | None = Field(None, description="weights folder (sd) or .onnx file (nudenet)")

    @field_validator("checker")
    @classmethod
    def _known_checker(cls, name: str) -> str:
        from darkroom.evals.safety import SAFETY_CHECKERS

        return _known("safety checker", name, SAFETY_CHECKERS)


class BootstrapSpec(BaseModel):
    """Confidence intervals: resampling the scored images (or prompts) of each run."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    resamples: int = Field(500, ge=0, le=10_000,
                           description="bootstrap resamples per run; 0 turns intervals off")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the resampling")
    level: float = Field(0.95, ge=0.5, le=0.999, description="confidence level of the intervals")


# Metrics that compare a run's features with the reference's.
REFERENCED = ("fid", "kid", "fd_dinov2", "cmmd", "precision", "recall", "density", "coverage",
              "fid_per_category")


class EvalSpec(BaseModel):
    """Which metrics to compute on a job's images, and against what."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    metrics: list[str] = Field(
        default_factory=lambda: ["fid", "kid", "clip_score", "safety"],
        description="registry names: fid, kid, fd_dinov2, cmmd, precision, recall, density, "
        "coverage, fid_per_category, clip_score, safety, class_accuracy, pickscore",
    )
    feature_extractor: str = Field(
        "inception", description="for fid, kid, precision/recall, density/coverage: inception, "
        "clip, dinov2, digits, tiny")
    reference: ReferenceSpec | None = Field(None, description="real images for fid/kid")
    backend: Literal["cleanfid", "torchmetrics"] = Field(
        "cleanfid", description="who computes FID/KID from the features"
    )
    weights: str | None = Field(
        None, description="the feature extractor's weights: Inception file or folder, CLIP folder "
        "or hub id, digits classifier folder; default: its usual place",
    )
    clip_model: str = Field(
        "openai/clip-vit-large-patch14", description="CLIP for clip_score: a local folder or hub id"
    )
    dinov2_model: str = Field(
        "facebook/dinov2-large", description="DINOv2 for fd_dinov2: a local folder or hub id")
    pickscore_model: str = Field(
        "yuvalkirstain/PickScore_v1", description="PickScore's CLIP: a local folder (model and "
        "processor) or hub id (processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    classifier: str = Field("digits", description="the judge of class_accuracy")
    safety: SafetySpec = Field(default_factory=SafetySpec)
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
        from darkroom.evals.metrics.compute import METRICS

        if not metrics:
            raise ValueError(f"`metrics` is empty; name at least one of {', '.join(METRICS)}")
        problems = []
        for name in metrics:
            try:
                _known("metric", name, METRICS)
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
        from darkroom.evals.extractors import EXTRACTORS

        return _known("feature extractor", name, EXTRACTORS)

    @field_validator("classifier")
    @classmethod
    def _known_classifier(cls, name: str) -> str:
        from darkroom.evals.metrics.compute import CLASSIFIERS

        return _known("classifier", name, CLASSIFIERS)

    @model_validator(mode="after")
    def _reference_for_distances(self) -> EvalSpec:
        # Listed on purpose without real images is a mistake; the default list just skips them.
        wanted = [m for m in self.metrics if m in REFERENCED]
        if wanted and self.reference is None and "metrics" in self.model_fields_set:
            raise ValueError(
                f"{_listing(wanted)} compare against real images: give `reference` "
                "(dataset: builtin:digits | folder: PATH | parquet: PATH | stats: FILE.npz)"
            )
        return self


class TrackingSpec(BaseModel):
    """Where results are logged in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    experiment: str | None = Field(None, description="MLflow experiment; default: the job name")
    uri: str | None = Field(None, description="tracking URI; default: MLflow's (sqlite:///mlflow.db)")
