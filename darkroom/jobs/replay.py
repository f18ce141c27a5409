"""`darkroom replay`: make one row's image again from the provenance in its row, and compare.

The row gives its seed, prompt, negative prompt, class, size, steps, guidance and eta; run.json
gives the model and the sampler with its overrides; job.yaml gives the runtime and, for a
ControlNet row, the folder of control images (the row keeps only the control image's SHA-256,
which must match). The image is generated alone, in this process, and compared pixel by pixel
with the stored one: rows are generated with a generator per row, so an image does not depend
on its batch-mates beyond float rounding (1/255 at most on the tiny models).
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
from darkroom.platform.data.storage import Location
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


def request_of(row: dict[str, Any], info: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """The Generator request that made `row`, from the row, run.json and job.yaml."""
    sampler = info.get("sampler") or {}
    request = {
        "seed": row["seed"], "prompt": row["prompt"], "negative_prompt": row["negative_prompt"],
        "class_label": None if row["class_label"] is None else str(row["class_label"]),
        "width": row["width"], "height": row["height"], "steps": row["steps"],
        "guidance_scale": row["guidance_scale"], "eta": row["eta"],
        "sampler": row["sampler"],
        "sampler_overrides": json.dumps(sampler.get("overrides") or {}, sort_keys=True),
    }
    if row["control_image_sha256"] is not None:
        request["control_image"] = _control_image(row, job)
    return request


def _control_image(row: dict[str, Any], job: dict[str, Any]) -> bytes:
    folder = (job.get("prompts") or {}).get("control_images")
    if not folder:
        raise UserError(f"row {row['row_id']} was made from a control image, and the job's "
                        "job.yaml names no `prompts.control_images` folder to find it in")
    path = storage.location(folder) / row["prompt_id"]
    if not storage.is_file(path):
        raise UserError(f"the control image of row {row['row_id']} is gone: {path}")
    data = storage.read_bytes(path)
    if sha256(data) != row["control_image_sha256"]:
        raise UserError(f"the control image {path} changed since row {row['row_id']} was made "
                        "(its SHA-256 differs): the row cannot be replayed from it")
    return data


def replay(where: str | Location, row_id: str, device: str | None = None) -> Replay:
    """Generate `row_id` again, alone, and compare it with the stored image."""
    from darkroom.platform.config import parse_yaml
    from darkroom.platform.engine.generator import Generator

    run_dir, row = find_row(where, row_id)
    info = layout.read_json(run_dir / layout.RUN_INFO)
    job_file = run_dir.parent / layout.JOB_SPEC
    job = parse_yaml(storage.read_text(job_file), str(job_file))[0] if storage.is_file(
        job_file) else {}
    runtime = dict((job or {}).get("runtime") or {})
    if device:
        runtime["device"] = device
    request = request_of(row, info, job or {})
    generator = Generator(info["model"], runtime=runtime)
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
