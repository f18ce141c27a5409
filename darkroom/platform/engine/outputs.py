"""Image rows and error rows, as the generator returns them (`records.IMAGE_SCHEMA` columns plus
`error`): the request's identity, what made the image, the image, and its provenance."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import darkroom
from darkroom.platform.data.records import IMAGE_COLUMNS, encode_png, sha256, to_uint8
from darkroom.platform.engine.rows import IDENTITY, RequestRow
from darkroom.platform.families.calling import Request, Settings, thaw

OUTPUT_COLUMNS = [*IMAGE_COLUMNS, "error"]
NON_FINITE = ("the image came out non-finite (NaN or inf pixels), usually an overflow: use fp32 or "
              "bf16 instead of fp16, or a lower guidance_scale")


@dataclass(frozen=True)
class Provenance:
    """The columns every row of one generator shares: the model, its runtime, the versions."""

    columns: dict[str, Any]

    @classmethod
    def of(cls, spec: Any, loaded: Any, runtime: Any, device: str,
           torch_version: str) -> Provenance:
        """The provenance of a loaded model on a device."""
        from importlib.metadata import version

        if device.startswith("cuda"):
            import torch

            device_name = torch.cuda.get_device_name()
        else:
            device_name = "cpu"
        return cls({
            "model": spec.label,
            "model_family": loaded.family.name,
            "model_revision": loaded.revision,
            "model_spec": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
            "runtime_options": runtime.recorded(),
            "device": device_name,
            "darkroom_version": darkroom.__version__,
            "diffusers_version": version("diffusers"),
            "torch_version": torch_version,
        })


def image_row(row: RequestRow, request: Request, image: np.ndarray, settings: Settings,
              scheduler_json: str, adapters_json: str, provenance: Provenance,
              batch_size: int, seconds: float) -> dict[str, Any]:
    """The image row of one generated image (or its error row, if the pixels are not finite)."""
    pixels = np.asarray(image)
    if not np.isfinite(pixels).all():  # would be saved as a black image, silently
        return error_row(row, provenance, settings.sampler, NON_FINITE)
    png = encode_png(to_uint8(pixels))
    return {
        **row.identity(),
        **provenance.columns,
        "seed": request.seed,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "class_label": request.class_label,
        "control_image_sha256": None if row.control_image is None or request.control_image is None
        else sha256(row.control_image),
        "width": settings.width,
        "height": settings.height,
        "sampler": settings.sampler,
        "sampler_config": scheduler_json,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "eta": settings.eta,
        "strength": settings.strength,
        "image_guidance_scale": settings.image_guidance_scale,
        "call_options": json.dumps({k: list(v) for k, v in thaw(settings.call_options).items()},
                                   sort_keys=True),
        "adapters": adapters_json,
        "input_images": json.dumps(request.inputs, sort_keys=True) if request.inputs else None,
        "image": png,
        "image_sha256": sha256(png),
        "batch_size": batch_size,
        "gen_seconds": seconds,
        "created_at": dt.datetime.now(dt.UTC),
        "error": None,
    }


def error_row(row: RequestRow | Mapping[str, Any], provenance: Provenance, sampler: str,
              reason: str) -> dict[str, Any]:
    """The row of a request that could not be generated: its identity and the reason."""
    record = row.model_dump() if isinstance(row, RequestRow) else dict(row)
    out: dict[str, Any] = {col: None for col in OUTPUT_COLUMNS}
    out.update({name: _text_or(record.get(name), "" if name != "sample_idx" else 0)
                for name in IDENTITY})
    out.update(provenance.columns)
    seed = record.get("seed")
    out.update({
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "prompt": record.get("prompt") if isinstance(record.get("prompt"), str) else None,
        "sampler": record.get("sampler") if isinstance(record.get("sampler"), str) else sampler,
        "created_at": dt.datetime.now(dt.UTC),
        "error": reason,
    })
    return out


def _text_or(value: Any, default: Any) -> Any:
    """An identity value of the right type, else the default (a malformed record's error row
    must still be writable)."""
    return value if isinstance(value, type(default)) and not isinstance(value, bool) else default
