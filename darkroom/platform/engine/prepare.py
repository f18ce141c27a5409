"""A request row -> the settings it shares with other rows, and its own request.

Rows with equal settings run as one pipeline call. Every check is the family's own rule
(`Family` methods), the same that `darkroom validate` and the serve file's checks apply, so a
bad row gets the same words as a bad job file; a row that cannot be generated raises
`RowError`, which fails that row alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.errors import did_you_mean
from darkroom.platform.families import Family, Grid
from darkroom.platform.families.calling import Request, Settings, freeze
from darkroom.platform.families.conditioning import (
    RowError,
    class_id,
    control_image,
    fitted,
    input_image,
    recorded_class,
)
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SAMPLERS, SamplerSpec

DEFAULTS = {"steps": 25, "guidance_scale": 5.0, "eta": 0.0}


@dataclass
class RowPreparer:
    """What a loaded model lets rows ask for, and the defaults for what they leave unset."""

    spec: ModelSpec
    family: Family
    grid: Grid
    sampler: SamplerSpec  # the default sampler
    fitting: list[str]  # the samplers that fit this model
    defaults: Mapping[str, Any]  # steps, guidance_scale, eta, and optionally width, height
    pipeline_class: type
    class_names: Mapping[str, int] | None = None
    classes: int | None = None

    @property
    def who(self) -> str:
        """How messages name the model: `label (family)`."""
        return self.family.who(self.spec.label)

    def row(self, record: RequestRow | Mapping[str, Any]) -> RequestRow:
        """A record as a RequestRow; a malformed record is that row's error."""
        if isinstance(record, RequestRow):
            return record
        try:
            return RequestRow.model_validate(dict(record))
        except ValidationError as err:
            problems = "; ".join(f"`{'.'.join(map(str, e['loc'])) or 'row'}`: {e['msg']}"
                                 for e in err.errors())
            raise RowError(problems) from err

    def prepare(self, row: RequestRow) -> tuple[Settings, Request]:
        """The row's settings (defaults filled in, each checked) and its request."""
        sampler = row.sampler or self.sampler.name
        if sampler not in SAMPLERS:
            raise RowError(f"unknown sampler `{sampler}`;{did_you_mean(sampler, SAMPLERS)}")
        if sampler not in self.fitting:
            raise RowError(f"`{sampler}` does not fit {self.family.name} models "
                           f"({self.spec.label}); fitting: {', '.join(self.fitting)}")
        overrides = row.sampler_overrides
        if overrides is None:
            overrides = self.sampler.overrides if sampler == self.sampler.name else {}
        image, mask, found = self._edit_inputs(row)
        width, height = self._size(row, image)
        steps = row.steps or self.defaults["steps"]
        if steps < 1:
            raise RowError(f"`steps` must be at least 1, got {steps}")
        problem = self.family.call_option_problem(row.call_options, self.who)
        if problem:
            raise RowError(problem)
        if row.negative_prompt:
            problem = self.family.negative_problem(self.spec, self.pipeline_class, self.who)
            if problem:
                raise RowError(problem)
        problem = self.family.strength_problem(int(steps), row.strength, self.pipeline_class)
        if problem:
            raise RowError(problem)
        for name in ("strength", "image_guidance_scale"):
            if getattr(row, name) is not None and name not in self.family.edits:
                raise RowError(f"`{name}` is for image-editing models that take it; {self.who} "
                               "does not: leave it unset")
        settings = Settings(
            sampler=sampler,
            sampler_overrides=freeze(overrides),
            steps=int(steps),
            guidance_scale=float(_first(row.guidance_scale, self.defaults["guidance_scale"])),
            eta=float(_first(row.eta, self.defaults["eta"])),
            width=width,
            height=height,
            call_options=freeze(row.call_options),
            adapters=self._adapters(row.adapters, row.lora_scale),
            strength=row.strength,
            image_guidance_scale=row.image_guidance_scale,
        )
        control, control_found = self._control_image(row, width, height)
        request = Request(
            prompt=row.prompt, negative_prompt=row.negative_prompt, seed=row.seed,
            class_label=self._class_label(row), control_image=control,
            image=None if image is None else fitted(image, width, height),
            mask=None if mask is None else fitted(mask, width, height, mask=True),
            inputs=control_found + found,
        )
        return settings, request

    def _edit_inputs(self, row: RequestRow) -> tuple[Any, Any, list[dict[str, Any]]]:
        """The source image and mask an editing model's row needs (None for other models), and
        what they were."""
        wanted = self.family.conditioning.inputs
        image = mask = None
        found = []
        if "image" in wanted:
            image, record = input_image(row.image, "image", self.spec.label,
                                        row.input_paths.get("image"))
            found.append(record)
        if "mask" in wanted or ("mask" in self.family.conditioning.optional and row.mask):
            mask, record = input_image(row.mask, "mask", self.spec.label,
                                       row.input_paths.get("mask"))
            if image is not None and mask.size != image.size:
                raise RowError(f"the mask is {mask.width}x{mask.height} and the image "
                               f"{image.width}x{image.height}: give a mask of the image's size")
            found.append(record)
        return image, mask, found

    def _size(self, row: RequestRow, image: Any = None) -> tuple[int, int]:
        native = self.grid.native
        if image is not None:  # an edit keeps its source's size, on the model's grid
            step = self.grid.multiple
            native_w = max(step, image.width // step * step)
            native_h = max(step, image.height // step * step)
        else:
            native_w = native_h = native
        width = row.width or self.defaults.get("width") or native_w
        height = row.height or self.defaults.get("height") or native_h
        for _side, message in self.family.size_problems(width, height, self.grid, self.who):
            raise RowError(message)
        return int(width), int(height)

    def _adapters(self, names: list[str] | None, lora_scale: float | None
                  ) -> tuple[tuple[str, float], ...]:
        """The row's adapters (None: all of the model's) at their scales times `lora_scale`,
        in the spec's order."""
        scale = 1.0 if lora_scale is None else float(lora_scale)
        known = {lora.name: lora.scale for lora in self.spec.loras}
        wanted = list(known) if names is None else names
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise RowError(f"unknown adapter(s) {', '.join(unknown)} for {self.spec.label}; "
                           f"it has: {', '.join(known) or 'none'}")
        return tuple((n, known[n] * scale) for n in known if n in wanted)

    def _class_label(self, row: RequestRow) -> int | None:
        if self.family.conditioning.name != "class":
            return recorded_class(row.class_label)  # not conditioning: judged by, later
        if row.class_label is None:
            hint = f" (got prompt {row.prompt[:40]!r})" if row.prompt else ""
            raise RowError(f"{self.spec.label} is class-conditional: give `class_label` as an "
                           f"id or a name{hint}")
        return class_id(row.class_label, self.class_names, self.classes)

    def _control_image(self, row: RequestRow, width: int, height: int
                       ) -> tuple[Any, list[dict[str, Any]]]:
        if self.family.conditioning.name != "text+control":
            return None, []
        image, found = control_image(row.control_image, width, height, self.spec.control,
                                     self.spec.label)
        if row.input_paths.get("control"):
            found["path"] = row.input_paths["control"]
        return image, [found]


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
