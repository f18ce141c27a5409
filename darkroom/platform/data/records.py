"""The Parquet row schema (one row = one image), PNG encode/decode and contact sheets."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

IDENTITY = [
    pa.field("job_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("row_id", pa.string()),
    pa.field("prompt_id", pa.string()),
    pa.field("sample_idx", pa.int64()),
    pa.field("seed", pa.int64()),
]
REQUEST = [
    pa.field("prompt", pa.string()),
    pa.field("negative_prompt", pa.string()),
    pa.field("class_label", pa.int64()),
    pa.field("control_image_sha256", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
]
SETTINGS = [
    pa.field("model", pa.string()),
    pa.field("model_family", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("sampler", pa.string()),
    pa.field("sampler_config", pa.string()),
    pa.field("steps", pa.int64()),
    pa.field("guidance_scale", pa.float64()),
    pa.field("eta", pa.float64()),
    pa.field("runtime_options", pa.string()),
    # every model setting that changes pixels: source, revision, dtype, refiner and its switch,
    # ControlNet weights and preprocessing, sequence length, true CFG, dropped encoders (JSON)
    pa.field("model_spec", pa.string()),
    pa.field("call_options", pa.string()),  # family call options, e.g. SDXL micro-conditioning
    pa.field("adapters", pa.string()),  # JSON: the active LoRA adapters, scale and SHA-256
]
OUTPUT = [
    pa.field("image", pa.binary()),
    pa.field("image_sha256", pa.string()),
]
PROVENANCE = [
    pa.field("batch_size", pa.int64()),
    pa.field("gen_seconds", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("darkroom_version", pa.string()),
    pa.field("diffusers_version", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
]

IMAGE_SCHEMA = pa.schema(IDENTITY + REQUEST + SETTINGS + OUTPUT + PROVENANCE)
IMAGE_COLUMNS = IMAGE_SCHEMA.names

# Rows that could not be generated: the request identity, what went wrong, and when.
ERROR_SCHEMA = pa.schema(
    IDENTITY
    + [
        pa.field("model", pa.string()),
        pa.field("sampler", pa.string()),
        pa.field("error", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes (image and control-image hashes in the rows)."""
    return hashlib.sha256(data).hexdigest()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (HxWxC) -> uint8, rounding to nearest."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """Lossless PNG bytes of a uint8 HxWx3 array or a PIL image."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 HxWx3 array."""
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))


def contact_sheet(
    images: Sequence[bytes | np.ndarray], labels: Sequence[str] | None = None, columns: int = 8,
    cell: int = 96,
) -> Image.Image:
    """A grid of images, each scaled to `cell` pixels, with an optional caption under each."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    caption = 14 if labels else 0
    sheet = Image.new("RGB", (columns * cell, rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        array = decode_png(image) if isinstance(image, bytes) else image
        tile = Image.fromarray(array).resize((cell, cell), Image.Resampling.NEAREST)
        x, y = (i % columns) * cell, (i // columns) * (cell + caption)
        sheet.paste(tile, (x, y))
        if labels:
            draw.text((x + 2, y + cell), str(labels[i])[: cell // 6], fill="black")
    return sheet
