"""`run.json`: a run's resolved settings, typed, written by the job plan and read by everything
that looks at a run afterwards (evaluation, tracking, compare, paired comparisons, replay).

Unknown keys are ignored and keys added later have defaults, so run folders written by older
versions read as they are.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError
from darkroom.platform.models.spec import ModelSpec


class RunSampler(BaseModel):
    """The sampler a run used, as recorded (not re-checked against today's diffusers)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class RunInfo(BaseModel):
    """What run.json holds: one point of a job's sweep with everything that decides its
    images, and how many prompts and images per prompt the job asked for."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    run_id: str
    job: str = ""
    format: int = 1  # layout.FORMAT: 2 when data files count only with a commit marker
    model: ModelSpec
    model_label: str = ""
    sampler: RunSampler
    steps: int
    guidance_scale: float
    eta: float = 0.0
    width: int | None = None
    height: int | None = None
    call_options: dict[str, list[int]] = Field(default_factory=dict)
    lora_scale: float = 1.0
    adapters: list[str] | None = None  # None: all of the model's adapters
    seed: int = 0
    images_per_prompt: int = 1
    prompt_count: int = 0
    strength: float | None = None  # image editing; None: the pipeline's default
    image_guidance_scale: float | None = None  # instruction editing

    @property
    def label(self) -> str:
        """The model's label (its `name`, else its source)."""
        return self.model_label or self.model.label

    def dump(self) -> dict[str, Any]:
        """Plain JSON data, as written to run.json."""
        return self.model_dump(mode="json")


def read_run_info(run_dir: str | Location) -> RunInfo:
    """A run folder's run.json; a missing or malformed file is a UserError naming it."""
    path = storage.location(run_dir) / layout.RUN_INFO
    try:
        return RunInfo.model_validate(json.loads(storage.read_text(path)))
    except FileNotFoundError as err:
        raise UserError(f"{path} is missing: not a run folder written by `darkroom run`") from err
    except (ValueError, ValidationError) as err:
        first = str(err).splitlines()[0][:200]
        raise UserError(f"{path} is not a readable run record ({first}); "
                        "`darkroom run` the job again to rewrite it") from err


def write_run_info(run_dir: Location, info: RunInfo) -> None:
    """run.json of a run, with the current layout format."""
    record = info.model_copy(update={"format": layout.FORMAT}).dump()
    storage.write_text(run_dir / layout.RUN_INFO, json.dumps(record, indent=2) + "\n")
