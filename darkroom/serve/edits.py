"""`POST /v1/images/edits`: OpenAI's multipart edit request, and its input images checked from
their headers before anything decodes them.

The ingress reads each file's header only (format, size, mode): a non-image, an image that
declares more than `limits.max_input_pixels` (a decompression bomb: a huge declared size in a
small file), a mask of another size than the image and more images than the model takes are
refused there, with a 400 naming the field, before a pixel is decoded. The model replica's
generator decodes the image and refuses what only decoding shows (a truncated file) for that
row alone. A mask with transparent pixels follows OpenAI's convention (transparent: edit here)
and is turned into diffusers' (white: repaint) here; any other mask is taken as diffusers'.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from darkroom.serve.protocol import MAX_GUIDANCE, BadRequest, BaseRequest, Limits, constrained

FORMATS = ("PNG", "JPEG", "WEBP")  # what OpenAI's edits take
MULTIPART = ("send the edit as multipart/form-data: the file field `image` (and `mask`) and the "
             "text fields `prompt`, `n`, `size`, ...")


class InputImages(BaseModel):
    """The input images and edit settings the served model's family takes, when known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: tuple[str, ...] = ()  # "image", "mask"
    optional: tuple[str, ...] = ()
    edits: tuple[str, ...] = ()  # strength, image_guidance_scale
    max_images: int = 1  # source images per request (every family here takes one)

    def takes(self, name: str) -> bool:
        return name in self.required or name in self.optional


class EditRequest(BaseRequest):
    """`POST /v1/images/edits` (multipart/form-data): OpenAI's fields, then Darkroom's."""

    size: str | None = Field(
        None, pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$",
        description="WIDTHxHEIGHT of the result; auto or unset: the source image's size (on the "
        "model's grid)",
    )
    image: list[UploadFile] = Field(default_factory=list, description="the source image (PNG, "
                                    "JPEG or WebP)")
    images: list[UploadFile] = Field(default_factory=list, alias="image[]",
                                     description="the source images, as OpenAI's client sends a "
                                     "list")
    mask: UploadFile | None = Field(None, description="where to edit: transparent pixels "
                                    "(OpenAI's convention) or white ones; the image's size")
    strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                   description="img2img and inpainting: how much of the source "
                                   "is noised away")
    image_guidance_scale: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False,
        description="instruction editing: guidance towards the source image")

    def files(self) -> list[UploadFile]:
        """The source image files, however the client named the field."""
        return [*self.image, *self.images]


def edit_model(limits: Limits, samplers: list[str] | None = None,
               urls: bool = False) -> type[EditRequest]:
    """`EditRequest` with this server's limits as schema constraints."""

    class ImageEditRequest(constrained(limits, samplers, urls), EditRequest):
        # the base's generic `size` would come first in this order of bases
        size: str | None = EditRequest.model_fields["size"]

    return ImageEditRequest


@dataclass(frozen=True)
class Header:
    """What an image file declares, read without decoding it."""

    width: int
    height: int
    format: str
    transparent: bool  # has an alpha channel or a transparent colour


def read_header(data: bytes, role: str, max_pixels: int) -> Header:
    """The header of an input image; a 400 naming `role` for a non-image, another format or a
    declared size past `max_pixels`, before any decoding."""
    from PIL import Image

    too_many = (f"`{role}` declares more than the {max_pixels} pixels this server takes "
                "(limits.max_input_pixels): send a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                kind, (width, height), mode = image.format, image.size, image.mode
                transparent = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                    "transparency" in image.info)
    except Image.DecompressionBombError:  # PIL's own cap, met in the header
        raise BadRequest(too_many, role) from None
    except Exception as err:
        raise BadRequest(f"`{role}` is not an image file (PNG, JPEG or WebP): "
                         f"{type(err).__name__}", role) from None
    if kind not in FORMATS:
        raise BadRequest(f"`{role}` is a {kind} file; send PNG, JPEG or WebP", role)
    if width * height > max_pixels:
        raise BadRequest(f"`{role}` declares {width}x{height} pixels, more than the {max_pixels} "
                         "this server takes (limits.max_input_pixels): send a smaller image",
                         role)
    return Header(width, height, kind, transparent)


@dataclass(frozen=True)
class Inputs:
    """An edit request's checked inputs: the image and mask bytes, and the image's header."""

    image: bytes
    mask: bytes | None
    header: Header


async def checked_inputs(body: EditRequest, takes: InputImages | None, limits: Limits,
                         model_id: str) -> Inputs:
    """The request's image and mask, refused (400) as the module says; `takes` None: the
    family is not known before loading, and the replica checks what it takes."""
    files = body.files()
    if not files:
        raise BadRequest("give the source image as the file field `image`; " + MULTIPART, "image")
    most = takes.max_images if takes else 1
    if len(files) > most:
        raise BadRequest(f"{model_id} edits {most} source image per request; got {len(files)}",
                         "image")
    image = await files[0].read()
    header = read_header(image, "image", limits.max_input_pixels)
    mask = await body.mask.read() if body.mask is not None else None
    if takes and mask is None and "mask" in takes.required:
        raise BadRequest(f"{model_id} is an inpainting model: give `mask`, the image's size, "
                         "transparent (or white) where it should repaint", "mask")
    if takes and mask is not None and not takes.takes("mask"):
        raise BadRequest(f"{model_id} takes no mask: leave `mask` out", "mask")
    for name in ("strength", "image_guidance_scale"):
        if takes and getattr(body, name) is not None and name not in takes.edits:
            raise BadRequest(f"{model_id} takes no `{name}`: leave it unset", name)
    if mask is not None:
        found = read_header(mask, "mask", limits.max_input_pixels)
        if (found.width, found.height) != (header.width, header.height):
            raise BadRequest(f"the mask is {found.width}x{found.height} and the image "
                             f"{header.width}x{header.height}: give a mask of the image's size",
                             "mask")
        if found.transparent:
            import asyncio

            mask = await asyncio.to_thread(diffusers_mask, mask)
    if body.size is None and max(header.width, header.height) > limits.max_side:
        raise BadRequest(f"the image is {header.width}x{header.height}, larger than the "
                         f"{limits.max_side} px a side this server makes: give `size` to edit "
                         "it at a smaller size", "image")
    return Inputs(image, mask, header)


def diffusers_mask(data: bytes) -> bytes:
    """A mask with transparent pixels -> a PNG that is white where it was fully transparent
    (OpenAI's "edit here") and black elsewhere, as diffusers' pipelines read masks. A mask whose
    alpha is nowhere zero is kept as it is (white: repaint)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            alpha = image.convert("RGBA").getchannel("A")
    except Exception as err:
        raise BadRequest(f"`mask` is not a readable image: {type(err).__name__}: "
                         f"{str(err)[:200]}", "mask") from None
    if alpha.getextrema()[0] > 0:
        return data
    buffer = io.BytesIO()
    alpha.point(lambda a: 255 if a == 0 else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def edit_fields(body: EditRequest, inputs: Inputs) -> dict[str, Any]:
    """The request-row fields of an edit beyond those of a generation."""
    return {"image": inputs.image, "mask": inputs.mask, "strength": body.strength,
            "image_guidance_scale": body.image_guidance_scale}
