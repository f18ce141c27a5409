"""The `eval:` and `tracking:` sections of a job file (also built from `darkroom eval` flags)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReferenceSpec(BaseModel):
    """Real images to compare against: exactly one source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class EvalSpec(BaseModel):
    """Which metrics to compute on a job's images, and against what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: list[str] = Field(
        default_factory=lambda: ["fid", "kid", "clip_score", "safety"],
        description="registry names: fid, kid, clip_score, safety, class_accuracy",
    )
    feature_extractor: str = Field("inception", description="for fid/kid: inception, clip, digits")
    reference: ReferenceSpec | None = Field(None, description="real images for fid/kid")


class TrackingSpec(BaseModel):
    """Where results are logged in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str | None = Field(None, description="MLflow experiment; default: the job name")
    uri: str | None = Field(None, description="tracking URI; default: MLflow's (sqlite:///mlflow.db)")
