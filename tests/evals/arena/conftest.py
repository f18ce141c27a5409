"""Job folders for rating rounds, written directly as `darkroom run` lays them out (Parquet image
rows with commit markers, run.json, job.yaml): no Ray, no model. Each run's images are a flat
colour of the run with a pattern of the prompt, so an image says which run and key it is."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.platform.data import layout
from darkroom.platform.data.records import IMAGE_SCHEMA, encode_png

COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 160, 40), (120, 40, 160),
           (40, 160, 160)]


def image(run_index: int, prompt: int, sample: int, size: int = 16) -> bytes:
    """A PNG that shows its run (colour) and key (a band at a height of the prompt)."""
    pixels = np.full((size, size, 3), COLOURS[run_index % len(COLOURS)], np.uint8)
    pixels[prompt % size, :] = 255
    pixels[:, sample % size] = 0
    return encode_png(pixels)


def write_job(root: Path, name: str = "rounds", runs: int = 3, prompts: int = 6,
              per_prompt: int = 2, steps: tuple[int, ...] | None = None,
              files: int = 2) -> Path:
    """A job folder of `runs` runs (run-0, run-1, ...) over the same prompts and seeds."""
    job_dir = root / name
    steps = steps or tuple(range(1, runs + 1))
    for r in range(runs):
        run_id = f"run-{r}"
        run_dir = job_dir / run_id
        (run_dir / layout.IMAGES).mkdir(parents=True)
        rows = []
        for p in range(prompts):
            for k in range(per_prompt):
                png = image(r, p, k)
                rows.append({"job_id": name, "run_id": run_id, "row_id": f"{p:04d}-{k:02d}",
                             "prompt_id": f"{p:04d}", "sample_idx": k, "seed": 100 * p + k,
                             "prompt": f"prompt number {p}", "width": 16, "height": 16,
                             "model": "tiny:sd", "sampler": "ddim", "steps": steps[r],
                             "guidance_scale": 5.0, "image": png,
                             "image_sha256": hashlib.sha256(png).hexdigest(),
                             "created_at": dt.datetime.now(dt.UTC)})
        table = pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
        share = -(-len(rows) // files)
        for f in range(files):
            path = run_dir / layout.IMAGES / f"part-{f}.parquet"
            pq.write_table(table.slice(f * share, share), path)
            layout.commit(path, {"rows": min(share, len(rows) - f * share)})
        info = {"run_id": run_id, "job": name, "format": layout.FORMAT,
                "model": {"model": "tiny:sd"}, "model_label": "tiny-sd",
                "sampler": {"name": "ddim", "overrides": {}}, "steps": steps[r],
                "guidance_scale": 5.0, "width": 16, "height": 16, "seed": 0,
                "images_per_prompt": per_prompt, "prompt_count": prompts}
        (run_dir / layout.RUN_INFO).write_text(json.dumps(info))
    (job_dir / layout.JOB_SPEC).write_text(f"name: {name}\n")
    return job_dir


@pytest.fixture
def job(tmp_path) -> Path:
    """Three runs over 6 prompts x 2 samples: 36 pairs."""
    return write_job(tmp_path)


@pytest.fixture(scope="session")
def make_job():
    """`write_job` for test modules."""
    return write_job


class Client:
    """The app in-process through an ASGI client (no server, no sockets), one event loop."""

    def __init__(self, app) -> None:
        self.app = app

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://arena") as client:
            return await client.request(method, path, **kwargs)

    def __call__(self, method: str, path: str, token: str | None = None,
                 **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return asyncio.run(self._request(method, path, headers=headers, **kwargs))


@pytest.fixture
def asgi():
    """Client(app)."""
    return Client
