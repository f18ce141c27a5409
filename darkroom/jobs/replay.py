"""`darkroom replay`: make one row's image again from the provenance in its row, and compare.

The row gives its seed, prompt, negative prompt, class, size, steps, guidance, eta and call
options (SDXL micro-conditioning); run.json gives the model, the sampler with its overrides and
the active adapters with their scale (each adapter's SHA-256 must match the row's); job.yaml
gives the runtime and, for a ControlNet row, the folder of control images (the row keeps only
the control image's SHA-256, which must match). The image is generated alone, in this process,
and compared pixel by pixel with the stored one: rows are generated with a generator per row, so
an image does not depend on its batch-mates beyond float rounding (1/255 at most on the tiny
models).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import decode_png, sha256
from darkroom.platform.data.runinfo import RunInfo, read_run_info
from darkroom.platform.data.storage import Location
from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.errors import UserError


@dataclass
class Replay:
    """What replaying a row found."""

    row_id: str
    max_difference: int  # the largest difference of a pixel channel, out of 255
    seconds: float
    original: np.ndarray
    image: np.ndarray

    def report(self, tolerance: int) -> str:
        """One line: identical, within the tolerance, or different."""
        verdict = ("identical" if self.max_difference == 0 else
                   "the same within the tolerance" if self.max_difference <= tolerance else
                   "DIFFERENT")
        return (f"{self.row_id}: regenerated in {self.seconds:.1f} s; {verdict} (max pixel "
                f"difference {self.max_difference}/255, tolerance {tolerance}/255)")


def find_row(where: str | Location, row_id: str) -> tuple[Location, dict[str, Any]]:
    """(the run folder, the stored image row) of `row_id` in a job folder or one of its runs."""
    loc = storage.location(where)
    run_id = row_id.split("/", 1)[0]
    if storage.is_file(loc / layout.RUN_INFO):
        if loc.name != run_id:
            raise UserError(f"row {row_id} belongs to run {run_id}, not to the run folder {loc}")
        run_dir = loc
    else:
        run_dir = loc / run_id
    if not storage.is_file(run_dir / layout.RUN_INFO):
        raise UserError(f"no run {run_id} in {loc}: row ids are <run_id>/<prompt_id>/<sample>, "
                        "and LOCATION is a job folder (OUTPUT/<name>) or a run folder in it")
    for kind in (layout.IMAGES, layout.ERRORS):
        for path in layout.parquet_files(run_dir / kind):
            ids = layout.read_file(path, ["row_id"]).column("row_id")
            if not pc.any(pc.equal(ids, row_id)).as_py():
                continue
            table = layout.read_file(path)
            row = table.filter(pc.equal(table.column("row_id"), row_id)).to_pylist()[0]
            if kind == layout.ERRORS:
                raise UserError(f"row {row_id} failed when it was generated ({row['error']}): "
                                "it has no image to replay")
            return run_dir, row
    raise UserError(f"row {row_id} is not in {run_dir} (it may not be generated yet)")


def request_of(row: dict[str, Any], info: RunInfo, job: dict[str, Any]) -> RequestRow:
    """The request that made `row`: the row's own inputs and settings, its input images read
    again from where the row says they came from, and from run.json the sampler overrides,
    the active adapters and their scale."""
    inputs = _input_images(row, job)
    return RequestRow(
        seed=row["seed"], prompt=row["prompt"] or "", negative_prompt=row["negative_prompt"] or "",
        class_label=None if row["class_label"] is None else str(row["class_label"]),
        width=row["width"], height=row["height"], steps=row["steps"],
        guidance_scale=row["guidance_scale"], eta=row["eta"], sampler=row["sampler"],
        sampler_overrides=info.sampler.overrides,
        call_options=json.loads(row.get("call_options") or "{}"),
        adapters=info.adapters, lora_scale=info.lora_scale,
        strength=row.get("strength"), image_guidance_scale=row.get("image_guidance_scale"),
        control_image=inputs.get("control"), image=inputs.get("image"), mask=inputs.get("mask"),
    )


def _input_images(row: dict[str, Any], job: dict[str, Any]) -> dict[str, bytes]:
    """role -> the bytes of each input image the row was made from, each checked against the
    SHA-256 the row recorded."""
    recorded = json.loads(row.get("input_images") or "[]")
    if not recorded and row.get("control_image_sha256"):  # rows written before input_images
        recorded = [{"role": "control", "sha256": row["control_image_sha256"],
                     "path": _control_folder_path(row, job)}]
    found = {}
    for entry in recorded:
        path = entry.get("path")
        if path is None:
            raise UserError(f"row {row['row_id']} was made from a {entry['role']} image whose "
                            "place it does not record: it cannot be replayed")
        location = storage.location(path)
        if not storage.is_file(location):
            raise UserError(f"the {entry['role']} image of row {row['row_id']} is gone: {path}")
        data = storage.read_bytes(location)
        if sha256(data) != entry["sha256"]:
            raise UserError(f"the {entry['role']} image {path} changed since row "
                            f"{row['row_id']} was made (its SHA-256 differs): the row cannot be "
                            "replayed from it")
        found[entry["role"]] = data
    return found


def _control_folder_path(row: dict[str, Any], job: dict[str, Any]) -> str:
    folder = (job.get("prompts") or {}).get("control_images")
    if not folder:
        raise UserError(f"row {row['row_id']} was made from a control image, and the job's "
                        "job.yaml names no `prompts.control_images` folder to find it in")
    return str(storage.location(folder) / row["prompt_id"])


def _check_adapters(row: dict[str, Any], generator: Any) -> None:
    """The adapters the row was made with are the ones loaded now (same SHA-256)."""
    recorded = json.loads(row.get("adapters") or "[]")
    loaded = generator.adapters.loaded if generator.adapters else {}
    for adapter in recorded:
        now = loaded.get(adapter["name"])
        if now is not None and adapter.get("sha256") and now.sha256 != adapter["sha256"]:
            raise UserError(f"adapter `{adapter['name']}` changed since row {row['row_id']} was "
                            f"made (its SHA-256 differs: {now.path}): the row cannot be replayed "
                            "with it")


def replay(where: str | Location, row_id: str, device: str | None = None) -> Replay:
    """Generate `row_id` again, alone, and compare it with the stored image."""
    from darkroom.platform.config import parse_yaml
    from darkroom.platform.engine.generator import ImageGenerator

    run_dir, row = find_row(where, row_id)
    info = read_run_info(run_dir)
    job_file = run_dir.parent / layout.JOB_SPEC
    job = parse_yaml(storage.read_text(job_file), str(job_file))[0] if storage.is_file(
        job_file) else {}
    runtime = dict((job or {}).get("runtime") or {})
    if device:
        runtime["device"] = device
    request = request_of(row, info, job or {})
    generator = ImageGenerator(info.model, runtime=runtime)
    _check_adapters(row, generator)
    started = time.perf_counter()
    (made,) = generator.generate([request])
    seconds = time.perf_counter() - started
    if made["error"] is not None:
        raise UserError(f"row {row_id} could not be generated again: {made['error']}")
    original, image = decode_png(row["image"]), decode_png(made["image"])
    if original.shape != image.shape:
        return Replay(row_id, 255, seconds, original, image)
    difference = int(np.abs(original.astype(np.int16) - image.astype(np.int16)).max())
    return Replay(row_id, difference, seconds, original, image)
