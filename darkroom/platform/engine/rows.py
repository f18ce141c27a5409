"""`RequestRow`: one image to generate, the one shape every producer of work uses.

Batch jobs expand prompts into request rows on the workers (as Arrow tables of
`request_schema()`, derived from this model), the serve ingress builds one per image, `replay`
rebuilds one from a stored row, and the generator reads them all the same way. Settings left
unset take the generator's defaults. Mappings travel through Arrow as JSON text; lists as Arrow
lists.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTITY = ("job_id", "run_id", "row_id", "prompt_id", "sample_idx")


class RequestRow(BaseModel):
    """One image to generate: who it is, what conditions it, and its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # identity, passed through to the image row
    job_id: str = ""
    run_id: str = ""
    row_id: str = ""
    prompt_id: str = ""
    sample_idx: int = 0
    seed: int = Field(description="the row's noise: initial latents and every sampler step")
    # conditioning
    prompt: str = ""
    negative_prompt: str = ""
    class_label: str | None = Field(None, description="a class id or name (as text)")
    control_image: bytes | None = Field(None, description="encoded control image (ControlNet)")
    image: bytes | None = Field(None, description="encoded source image (image editing)")
    mask: bytes | None = Field(None, description="encoded mask: white is repainted (inpainting)")
    input_paths: dict[str, str] = Field(
        default_factory=dict, description="where each input image came from (control, image, "
        "mask -> path or URI), recorded with the row so it can be replayed")
    # settings; None: the generator's default
    sampler: str | None = None
    sampler_overrides: dict[str, Any] | None = Field(
        None, description="scheduler config keys; None: the default sampler's own overrides")
    steps: int | None = None
    guidance_scale: float | None = None
    eta: float | None = None
    width: int | None = None
    height: int | None = None
    call_options: dict[str, list[int]] = Field(
        default_factory=dict, description="family call options (SDXL micro-conditioning)")
    adapters: list[str] | None = Field(
        None, description="active LoRA adapters by name; None: all of the model's")
    lora_scale: float | None = Field(None, description="times each adapter's own scale")
    strength: float | None = Field(
        None, description="image editing: how much of the source is noised away (0..1)")
    image_guidance_scale: float | None = Field(
        None, description="instruction editing: guidance towards the source image")

    @model_validator(mode="before")
    @classmethod
    def _missing_is_default(cls, data: Any) -> Any:
        """Nulls (and NaN, as Arrow and pandas write a missing float) mean "not given"."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not _missing(v)}
        return data

    @field_validator("sampler_overrides", "call_options", "input_paths", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        return json.loads(value or "{}") if isinstance(value, str) else value

    @field_validator("adapters", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("class_label", mode="before")
    @classmethod
    def _label_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def identity(self) -> dict[str, Any]:
        """The identity columns, for the image or error row."""
        return {name: getattr(self, name) for name in IDENTITY}

    def arrow_record(self) -> dict[str, Any]:
        """This row as a record of `request_schema()` (mappings as JSON text)."""
        record = self.model_dump()
        for name in _json_fields():
            if record[name] is not None:
                record[name] = json.dumps(record[name], sort_keys=True)
        return record


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(annotation: Any) -> Any:
    """`X | None` -> X; `dict[...]` -> dict; `list[...]` -> list."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


@functools.cache
def _json_fields() -> tuple[str, ...]:
    return tuple(name for name, f in RequestRow.model_fields.items()
                 if _plain(f.annotation) is dict)


@functools.cache
def request_schema() -> Any:
    """The Arrow schema of request rows, derived from `RequestRow`."""
    import pyarrow as pa

    types_ = {str: pa.string(), int: pa.int64(), float: pa.float64(), bytes: pa.binary(),
              bool: pa.bool_(), dict: pa.string(), list: pa.list_(pa.string())}
    return pa.schema([(name, types_[_plain(f.annotation)])
                      for name, f in RequestRow.model_fields.items()])
