"""The job file's shape: a frozen pydantic `JobSpec` and its sections.

Imports only pydantic, the standard library and other light specs, so `validate`, `schema` and
dry runs never load torch. Reading a file and the checks beyond types are in `jobs.jobfile`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform.families.sdxl import MICRO_CONDITIONING
from darkroom.platform.models.runtime import RuntimeSpec
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SamplerSpec
from darkroom.platform.suites import SuiteError, suite, suites

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# Upper bounds: well past any real use, low enough that a typo (1e9) is an error, not a plan that
# exhausts the driver's memory or an actor that runs for a year.
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_SIDE = 8192
MAX_IMAGES_PER_PROMPT = 10_000
MAX_ROWS_PER_RUN = 10_000_000  # rows per run (prompts x images_per_prompt)
MAX_AXIS = 1000  # values on one sweep axis
MAX_RUNS = 10_000  # runs of one job: models x every sweep axis


# -- sections ---------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)


class ColumnMap(_Section):
    """Which columns of a .jsonl/.csv/.parquet prompt file hold what."""

    prompt: str = Field("prompt", description="column with the prompt text")
    negative_prompt: str | None = Field(None, description="column with a per-row negative prompt")
    id: str | None = Field(None, description="column with a stable prompt id; default: row number")
    class_label: str | None = Field(None, description="column with a class id or name (DiT)")
    image: str | None = Field(None, description="column with a source image's path or URI "
                              "(image editing; relative paths: to the prompt file)")
    mask: str | None = Field(None, description="column with a mask's path or URI (inpainting; "
                             "white is repainted)")


SOURCE_KINDS = ("list", "file", "classes", "control_images", "images", "suite")


class PromptSource(_Section):
    """Where prompts come from: exactly one of list, file, classes, control_images, images,
    suite (a suite may take a `file` in its format)."""

    list_: list[str] | None = Field(None, alias="list", description="inline prompts")
    file: str | None = Field(
        None, description=".txt (one per line), .jsonl, .csv or .parquet; relative to the job file"
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="column mapping of `file`")
    classes: list[int | str] | None = Field(None, description="class ids or names (DiT)")
    control_images: str | None = Field(
        None, description="folder of control/input images (ControlNet); relative to the job file"
    )
    control_prompt: str = Field("", description="the prompt used with every control image")
    images: str | None = Field(
        None, description="folder of source images to edit, each one prompt (image editing); "
        "relative to the job file")
    masks: str | None = Field(
        None, description="folder of masks named as the `images` they belong to (inpainting)")
    instruction: str = Field("", description="the prompt or instruction used with every image "
                             "of `images`")
    suite: str | None = Field(
        None, description="a benchmark suite (`darkroom suites list`): its prompts, with their "
        "skills and questions for evaluation; with `file`, a local file or folder in the "
        "suite's format instead of its published one")
    images_per_prompt: int = Field(1, ge=1, le=MAX_IMAGES_PER_PROMPT,
                                   description="images generated for each prompt (a suite: "
                                   "its own default)")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts (smoke runs)")

    @model_validator(mode="before")
    @classmethod
    def _suite_defaults(cls, data: Any) -> Any:
        # a suite's protocol asks for so many images a prompt (GenEval 4, T2I-CompBench 10)
        name = data.get("suite") if isinstance(data, dict) else None
        if isinstance(name, str) and name in suites() and "images_per_prompt" not in data:
            data = {**data, "images_per_prompt": suite(name).images_per_prompt}
        return data

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                suite(name)
            except SuiteError as err:
                raise ValueError(f"{err} (suites: {', '.join(suites())})") from None
        return name

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptSource:
        given = [k for k in SOURCE_KINDS if self.source(k)]
        if self.suite and "file" in given:  # the suite's data, in its format
            given.remove("file")
        if len(given) != 1:
            raise ValueError(
                f"give exactly one prompt source: {', '.join(SOURCE_KINDS)}; got "
                f"{', '.join(given) or 'none'}"
            )
        if self.masks and not self.images:
            raise ValueError("`masks` belong to `images`: give the folder of images too")
        return self

    def source(self, kind: str) -> Any:
        """The value given for a source kind (`list` is the `list_` field)."""
        return self.list_ if kind == "list" else getattr(self, kind)

    @property
    def kind(self) -> str:
        """Which of SOURCE_KINDS this source is."""
        return "suite" if self.suite else next(k for k in SOURCE_KINDS if self.source(k))


def _sampler_entry(value: Any) -> Any:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict | SamplerSpec):
        raise ValueError("a sampler is a name (ddim) or {name: ..., overrides: {...}}")
    return value


SamplerEntry = Annotated[
    SamplerSpec, BeforeValidator(_sampler_entry, json_schema_input_type=str | SamplerSpec)
]


def _unique(values: list, field: str) -> list:
    seen = [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for v in values]
    for i, v in enumerate(seen):
        if v in seen[:i]:
            shown = v.get("name", v) if isinstance(v, dict) and len(v) == 1 else v
            raise ValueError(f"`{field}` lists {shown!r} twice (entries {seen.index(v)} and {i}); "
                             "remove one")
    return values


class SweepSpec(_Section):
    """The grid: every combination of these is one run (eta only for samplers that use it)."""

    sampler: list[SamplerEntry] = Field(
        default_factory=lambda: [SamplerSpec(name="ddim")], min_length=1, max_length=MAX_AXIS,
        description="sampler names, or {name, overrides}",
    )
    steps: list[Annotated[int, Field(ge=1, le=MAX_STEPS)]] = Field([25], min_length=1,
                                                                     max_length=MAX_AXIS)
    guidance_scale: list[Annotated[float, Field(ge=0, le=MAX_GUIDANCE)]] = Field(
        [5.0], min_length=1, max_length=MAX_AXIS)
    eta: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.0], min_length=1, max_length=MAX_AXIS,
        description="DDIM eta (Song et al. 2021), TCD gamma; ignored by other samplers"
    )
    lora_scale: list[Annotated[float, Field(ge=-10, le=10)]] = Field(
        [1.0], min_length=1, max_length=MAX_AXIS,
        description="times each adapter's own scale (0: the base model); only for models with "
        "`loras`")
    strength: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, min_length=1, max_length=MAX_AXIS, description="image editing: how much of the "
        "source image is noised away (1: all of it); default: the pipeline's")
    image_guidance_scale: list[Annotated[float, Field(ge=0, le=MAX_GUIDANCE)]] | None = Field(
        None, min_length=1, max_length=MAX_AXIS, description="instruction editing "
        "(InstructPix2Pix-style pipelines): guidance towards the source image")
    adapters: list[list[str]] | None = Field(
        None, min_length=1, max_length=MAX_AXIS,
        description="which adapter sets are active, e.g. [[], [style], [style, detail]]; "
        "default: all of each model's adapters")

    @field_validator("sampler", "steps", "guidance_scale", "eta", "lora_scale", "adapters",
                     "strength", "image_guidance_scale")
    @classmethod
    def _no_repeats(cls, values: list | None, info) -> list | None:
        return values if values is None else _unique(values, f"sweep.{info.field_name}")

    def axes(self) -> dict[str, int]:
        """Each axis and its number of values (eta counts only for samplers that use it, so it
        is counted at most; adapter sets only when given)."""
        sizes = {name: len(getattr(self, name)) for name in
                 ("sampler", "steps", "guidance_scale", "eta", "lora_scale")}
        for name in ("strength", "image_guidance_scale", "adapters"):
            if getattr(self, name):
                sizes[name] = len(getattr(self, name))
        return sizes


Pair = tuple[Annotated[int, Field(ge=0, le=MAX_SIDE)], Annotated[int, Field(ge=0, le=MAX_SIDE)]]

class GenerationSpec(_Section):
    """Image size, rows per generator call, the default negative prompt, and SDXL's size and
    crop micro-conditioning (Podell et al. 2023, sec. 2.2)."""

    width: int | None = Field(None, gt=0, le=MAX_SIDE,
                              description="default: the model's native size")
    height: int | None = Field(None, gt=0, le=MAX_SIDE,
                               description="default: the model's native size")
    batch_size: int = Field(4, ge=1, le=4096, description="rows per generator call")
    negative_prompt: str = Field("", description="for rows whose source gives none")
    original_size: Pair | None = Field(None, description="SDXL: [height, width] the model is "
                                       "told the training image had")
    crops_coords_top_left: Pair | None = Field(None, description="SDXL: [top, left] of the crop")
    target_size: Pair | None = Field(None, description="SDXL: [height, width] asked for")
    negative_original_size: Pair | None = Field(None, description="SDXL: for the negative")
    negative_crops_coords_top_left: Pair | None = Field(None, description="SDXL: for the negative")
    negative_target_size: Pair | None = Field(None, description="SDXL: for the negative")

    def call_options(self) -> dict[str, list[int]]:
        """The micro-conditioning that is set, as the pipeline call takes it."""
        return {k: list(getattr(self, k)) for k in MICRO_CONDITIONING if getattr(self, k)}

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, side: int | None, info) -> int | None:
        if side is not None and side % 8:
            low = side - side % 8
            raise ValueError(
                f"`{info.field_name}` must be divisible by 8, got {side}; use {low or 8} or "
                f"{low + 8}"
            )
        return side


class Actors(_Section):
    """The size of the actor pool: started with `min`, grown to at most `max`."""

    min: int = Field(1, ge=1, le=10_000, description="actors started at once")
    max: int = Field(1, ge=1, le=10_000, description="actors the pool may grow to")

    @model_validator(mode="after")
    def _ordered(self) -> Actors:
        if self.min > self.max:
            raise ValueError(f"`min` ({self.min}) must not exceed `max` ({self.max})")
        return self


class ComputeSpec(_Section):
    """The actor pool, and how much of a crash Ray repairs before the job fails."""

    actors: Actors = Field(default_factory=Actors)
    gpus_per_actor: float = Field(0, ge=0, le=64,
                                  description="GPUs per actor (fractions share a GPU)")
    cpus_per_actor: float = Field(1, gt=0, le=1024, description="CPUs per actor")
    max_restarts: int = Field(
        3, ge=-1, le=1000, description="times Ray restarts a crashed actor (-1: forever)"
    )
    max_task_retries: int = Field(
        3, ge=-1, le=1000, description="times Ray retries a batch lost with its actor (-1: forever)"
    )
    checkpoint_rows: int = Field(
        256, ge=1, le=1_000_000,
        description="rows per actor call and Parquet file, at most; a crash loses at most this "
        "many per actor"
    )
    checkpoint_seconds: float = Field(
        30, gt=0, le=86_400, description="not used since actors write their own files (one per "
        "call); accepted so older job files stay valid"
    )


class GateSpec(_Section):
    """`darkroom gate`: runtime options to judge and the tolerances they must keep."""

    options: list[str] = Field(default_factory=list, description="KEY=VALUE runtime overrides "
                               "of the candidate arm, e.g. runtime.cache={kind: first_block}")
    min_speedup: float | None = Field(None, gt=0, le=1000, description="fail below this")
    min_psnr: float | None = Field(None, ge=0, le=100, description="fail when the mean PSNR "
                                   "(dB) against the baseline images is below this")
    min_ssim: float | None = Field(None, ge=-1, le=1, description="fail below this mean SSIM")
    max_worsening: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="metric key -> the most it may get worse, e.g. "
        "{class_accuracy: 0.01, fid: 2.0}")


class JobSpec(_Section):
    """One YAML job file: prompts x models x sweep -> images in Parquet, optionally scored."""

    name: str = Field(description="experiment name in MLflow; folder name under output")
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="job seed; each row's seed derives from it")
    output: str = Field(
        "outputs", description="rows land in OUTPUT/<name>/<run_id>/: a local folder or a URI "
        "(s3://bucket/prefix, gs://..., abfs://..., file://...)")
    storage_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="options of the output's filesystem (pyarrow's "
        "S3FileSystem, GcsFileSystem, ... or fsspec's), e.g. {region: eu-west-1}; credentials "
        "and endpoint come from the standard environment (AWS_ENDPOINT_URL, ...)")
    prompts: PromptSource
    models: list[ModelSpec] = Field(min_length=1)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    error_budget: int | float = Field(
        0, description="failed rows allowed: a count (5) or a fraction of all rows (0.01)"
    )
    eval: EvalSpec | None = Field(None, description="metrics computed after generation")
    gate: GateSpec | None = Field(None, description="what `darkroom gate` judges, and how")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="before")
    @classmethod
    def _suite_metrics(cls, data: Any) -> Any:
        # an `eval:` without `metrics` on a suite's prompts computes the suite's own metrics
        prompts = data.get("prompts") if isinstance(data, dict) else None
        name = prompts.get("suite") if isinstance(prompts, dict) else None
        evaluation = data.get("eval") if isinstance(data, dict) else None
        if isinstance(name, str) and name in suites() and isinstance(evaluation, dict) \
                and "metrics" not in evaluation:
            from darkroom.evals.registry import metrics

            wanted = [m for m in suite(name).metrics if m in metrics()]
            data = {**data, "eval": {**evaluation, "metrics": wanted}}
        return data

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(
                "`name` names a folder: use letters, digits, '.', '_' and '-', starting with a "
                "letter or digit"
            )
        return name

    @field_validator("output")
    @classmethod
    def _output(cls, output: str) -> str:
        if not output.strip():
            raise ValueError("`output` is empty: give a folder or a URI (s3://bucket/prefix)")
        return output

    @field_validator("models")
    @classmethod
    def _unique_labels(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        labels = [m.label for m in models]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ValueError(
                    f"two models are labelled `{label}` (entries {labels.index(label)} and {i}); "
                    "give each a distinct `name`"
                )
        return models

    @field_validator("error_budget", mode="before")
    @classmethod
    def _a_number(cls, budget: Any) -> Any:
        if isinstance(budget, bool) or not isinstance(budget, int | float):
            raise ValueError("`error_budget` is a count of rows (5) or a fraction of all rows "
                             "(0.01)")
        return budget

    @field_validator("error_budget")
    @classmethod
    def _budget(cls, budget: int | float) -> int | float:
        if isinstance(budget, float) and not 0 <= budget <= 1:
            raise ValueError(
                "a fractional `error_budget` must be in [0, 1]; write a whole number for a count "
                "of rows"
            )
        if isinstance(budget, int) and budget < 0:
            raise ValueError("`error_budget` must be 0 or more (a count of rows)")
        return budget

    def allowed_errors(self, total_rows: int) -> int:
        """How many failed rows the error budget allows in a job of `total_rows` rows."""
        if isinstance(self.error_budget, float):
            return int(self.error_budget * total_rows)
        return self.error_budget

    def dump(self) -> dict[str, Any]:
        """The resolved spec as plain data (what job.yaml holds)."""
        return self.model_dump(mode="json", by_alias=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of job files (`darkroom schema`)."""
    return JobSpec.model_json_schema(by_alias=True)
