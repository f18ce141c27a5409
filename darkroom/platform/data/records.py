"""The Parquet row schema (one row = one image), PNG encode/decode, and content hashes."""

from __future__ import annotations

import functools
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
from PIL import Image

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
    pa.field("strength", pa.float64()),  # image editing; null: none given (the pipeline's)
    pa.field("image_guidance_scale", pa.float64()),  # instruction editing
    pa.field("runtime_options", pa.string()),
    # every model setting that changes pixels: source, revision, dtype, refiner and its switch,
    # ControlNet weights and preprocessing, sequence length, true CFG, dropped encoders (JSON)
    pa.field("model_spec", pa.string()),
    pa.field("call_options", pa.string()),  # family call options, e.g. SDXL micro-conditioning
    pa.field("adapters", pa.string()),  # JSON: the active LoRA adapters, scale and SHA-256
    # JSON: each input image (role, SHA-256, size, mode, whether it was resized); null if none
    pa.field("input_images", pa.string()),
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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (weights, adapters), computed once per size and modification time."""
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (HxWxC) -> uint8, rounding to nearest."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """Lossless PNG bytes of a uint8 HxWx3 array or a PIL image."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


MAX_INPUT_PIXELS = 8192 * 8192  # an input image larger than any image Darkroom makes


def open_image(data: bytes, what: str, error: type[Exception] = ValueError,
               max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Encoded image bytes -> a loaded PIL image; its size is read from the header first, so a
    decompression bomb (a huge declared size in a small file) is refused before decoding."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > max_pixels:
            raise error(f"{what} declares {width}x{height} pixels, more than the "
                        f"{max_pixels} an input may have")
        image.load()
    except error:
        raise
    except Image.DecompressionBombError as err:  # PIL's own cap, met in the header
        raise error(f"{what} declares more pixels than the {max_pixels} an input may have "
                    f"({err})") from err
    except Exception as err:  # any unreadable input means the same fix
        raise error(f"{what} is not a readable image: {type(err).__name__}: "
                    f"{str(err)[:200]}") from err
    return image


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 HxWx3 array."""
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))
