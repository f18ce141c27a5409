"""What a family is conditioned on, and how a request row's inputs become call inputs.

A conditioning names the prompt sources of a job that can feed it and the per-row inputs it
needs. The per-row parsers here are shared by every family of that conditioning, so a bad input
gets the same message from `darkroom validate`, a batch job's row and a serve request.
Imports only the standard library at module level: validating a file never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from darkroom.platform.errors import did_you_mean


class RowError(Exception):
    """This row cannot be generated; the reason goes into its `error` column (or a 400)."""


@dataclass(frozen=True)
class Conditioning:
    """What requests condition a family's images on, and which prompt sources can give it."""

    name: str  # "text", "class", "text+control", "text+image", "text+image+mask"
    sources: tuple[str, ...]  # prompt source kinds of a job file that fit
    hint: str  # what to give instead, for a source that does not fit
    inputs: tuple[str, ...] = ()  # the input images a row needs: control, image, mask
    optional: tuple[str, ...] = ()  # input images a row may give

    def source_problem(self, prompts: Any, who: str) -> str | None:
        """Why a job's prompt source cannot feed this conditioning, or None. `prompts` is the
        job's `prompts:` section (its kind, column mapping and folders)."""
        columns = prompts.columns
        gives = {"image": prompts.kind == "images" or bool(columns.image),
                 "mask": bool(getattr(prompts, "masks", None)) or bool(columns.mask)}
        if gives["mask"] and "mask" not in self.inputs + self.optional:
            return f"{who} is {self.describe()}: it takes no masks; remove them"
        if gives["image"] and "image" not in self.inputs:
            return f"{who} is {self.describe()}: it takes no source images; remove them"
        if any(not gives[name] for name in self.inputs if name in gives):
            return f"{who} is {self.describe()}: give {self.hint}"
        fits = (prompts.kind in self.sources or (self.name == "class" and columns.class_label)
                or (prompts.kind == "file" and gives["image"] and "image" in self.inputs))
        return None if fits else f"{who} is {self.describe()}: give {self.hint}"

    def describe(self) -> str:
        """How the conditioning reads in a sentence: 'text-conditioned', ..."""
        return {"text": "text-conditioned", "class": "class-conditional",
                "text+control": "a ControlNet model", "text+image": "an image-editing model",
                "text+image+mask": "an inpainting model"}.get(self.name, self.name)


TEXT = Conditioning("text", ("list", "file", "suite"),
                    "`prompts.list`, `prompts.file` or `prompts.suite`")
CLASS = Conditioning("class", ("classes",),
                     "`prompts.classes` (ids or names) or map `prompts.columns.class_label`")
CONTROL = Conditioning("text+control", ("control_images",),
                       "`prompts.control_images` (a folder) and `prompts.control_prompt`",
                       inputs=("control",))
IMAGE = Conditioning("text+image", ("images",),
                     "`prompts.images` (a folder) and `prompts.instruction`, or a prompt file "
                     "with `prompts.columns.image`", inputs=("image",))
EDIT = Conditioning("text+image", ("images",),
                    "`prompts.images` (a folder) and `prompts.instruction`, or a prompt file "
                    "with `prompts.columns.image`", inputs=("image",), optional=("mask",))
MASKED = Conditioning("text+image+mask", ("images",),
                      "`prompts.images` and `prompts.masks` (folders of the same file names), or "
                      "a prompt file with `prompts.columns.image` and `prompts.columns.mask`",
                      inputs=("image", "mask"))


def is_class_id(text: str) -> bool:
    """Whether a class label is written as an id: ASCII digits with an optional minus sign.

    Not `str.isdigit`, which is true for "²" and "①" that `int()` refuses."""
    digits = text.removeprefix("-")
    return digits.isascii() and digits.isdecimal()


def class_id(label: Any, names: dict[str, int] | None, classes: int | None) -> int:
    """A row's class label (an id, or a name the model's label table knows) -> its id."""
    text = str(label).strip()
    if is_class_id(text):
        value = int(text)
        if classes is not None and not 0 <= value < classes:
            raise RowError(f"`class_label` must be in 0..{classes - 1}, got {value}")
        return value
    if names is None:
        raise RowError(f"`class_label` {text[:40]!r} is not a class id, and the model has no "
                       "class names")
    if text not in names:
        raise RowError(f"unknown class name {text[:40]!r};{did_you_mean(text, names)}")
    return int(names[text])


def recorded_class(label: Any) -> int | None:
    """The class a text prompt's row asks for (to judge accuracy by), when it is an id."""
    text = str(label).strip() if label is not None else ""
    return int(text) if is_class_id(text) else None


def control_image(data: bytes | None, width: int, height: int, control: Any,
                  who: str) -> tuple[Any, dict[str, Any]]:
    """A row's control image bytes -> (the PIL image the ControlNet sees, what it was): resized
    to the output size unless the model's `control.resize` refuses that, edges taken when its
    `control.preprocessor` is canny."""
    if data is None:
        raise RowError(f"{who} is a ControlNet model: the row needs `control_image`")
    import numpy as np
    from PIL import Image

    from darkroom.platform.data.records import open_image, sha256

    image = open_image(data, "`control_image`", RowError)
    found = {"role": "control", "sha256": sha256(data), "width": image.width,
             "height": image.height, "mode": image.mode, "resized": image.size != (width, height)}
    if found["resized"] and control.resize == "refuse":
        raise RowError(f"`control_image` is {image.width}x{image.height}, the output "
                       f"{width}x{height}: give control images of the output size, or set the "
                       "model's `control.resize: stretch`")
    image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    if control.preprocessor == "canny":
        import cv2

        edges = cv2.Canny(np.asarray(image), control.low_threshold, control.high_threshold)
        image = Image.fromarray(np.stack([edges] * 3, axis=-1))
    return image, found


def input_image(data: bytes | None, role: str, who: str, path: str | None = None
                ) -> tuple[Any, dict[str, Any]]:
    """A row's `image` or `mask` bytes -> (the PIL image, what it was: role, SHA-256, size,
    mode, and where it came from when known); refused before decoding when it declares an
    absurd size."""
    if data is None:
        raise RowError(f"{who} needs `{role}` in every row (an image file of the row)")
    from darkroom.platform.data.records import open_image, sha256

    image = open_image(data, f"`{role}`", RowError)
    found = {"role": role, "sha256": sha256(data), "width": image.width, "height": image.height,
             "mode": image.mode, **({"path": path} if path else {})}
    return image, found


def fitted(image: Any, width: int, height: int, mask: bool = False) -> Any:
    """An input image at the output size (a mask as one channel, nearest neighbour)."""
    from PIL import Image

    if mask:
        image = image.convert("L")
        method = Image.Resampling.NEAREST
    else:
        image = image.convert("RGB")
        method = Image.Resampling.BICUBIC
    return image if image.size == (width, height) else image.resize((width, height), method)
