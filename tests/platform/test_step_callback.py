"""The generator's per-call step callback: called after each denoising step with the latents,
stopping the call between steps when it says so; no callback, no hook (and a pipeline that takes
none, DiT, runs as before)."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.platform.data.records import encode_png
from darkroom.platform.engine.generator import ImageGenerator

SOURCE = encode_png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "sd-inpaint", "flux-kontext"])
def test_a_call_stops_between_steps_when_its_callback_says_so(family):
    generator = ImageGenerator({"model": f"tiny:{family}"}, runtime={"device": "cpu"},
                               defaults={"steps": 12, "width": 32, "height": 32})
    seen: list[tuple[int, int, tuple, list[str]]] = []

    def on_step(rows):
        def callback(step: int, steps: int, latents) -> bool:
            seen.append((step, steps, tuple(latents.shape), [r.row_id for r in rows]))
            return step >= 3

        return callback

    rows = [{"seed": i, "row_id": f"r{i}", "prompt": "a fox", "image": SOURCE, "mask": SOURCE}
            for i in range(2)]
    out = generator.generate(rows, on_step=on_step)
    assert all(row["error"] is None for row in out), out[0]["error"]
    assert [(step, steps) for step, steps, _, _ in seen] == [(1, 12), (2, 12), (3, 12)]
    assert {shape[0] for _, _, shape, _ in seen} == {2}  # the call's latents, one per row
    assert seen[0][3] == ["r0", "r1"]
    assert len(generator.generate(rows[:1])) == 1  # without a callback: as before


def test_a_pipeline_without_a_step_callback_runs_whole():
    generator = ImageGenerator({"model": "tiny:dit"}, runtime={"device": "cpu"},
                               defaults={"steps": 3})
    called = []
    out = generator.generate([{"seed": 1, "class_label": "1"}],
                             on_step=lambda rows: lambda *args: called.append(args) or True)
    assert out[0]["error"] is None and not called
