"""Speed options that change the computation: step caches, regional compilation, quantization.
Each is accepted and recorded where it applies, and refused clearly where it cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darkroom.jobs.jobfile import validate
from darkroom.platform.config import SpecError
from darkroom.platform.data.records import decode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.errors import UserError

ROWS = [{"seed": i, "prompt": "a fox", "class_label": i % 10} for i in range(4)]


def run(model: str, runtime: dict, steps: int = 6) -> list[dict]:
    size = {} if model == "tiny:dit" else {"width": 32, "height": 32}
    gen = ImageGenerator({"model": model}, runtime={"device": "cpu", **runtime},
                    defaults={"steps": steps, **size})
    return gen.generate(ROWS)


@pytest.mark.parametrize(("model", "cache"), [
    ("tiny:dit", {"kind": "first_block", "threshold": 0.5}),
    ("tiny:flux", {"kind": "first_block", "threshold": 0.5}),
    ("tiny:t2i", {"kind": "first_block", "threshold": 0.5}),
    ("tiny:sd3", {"kind": "taylorseer", "options": {"cache_interval": 3,
                                                     "disable_cache_before_step": 1}}),
    ("tiny:flux", {"kind": "faster"}),
    ("tiny:flux", {"kind": "pab"}),
])
def test_a_cache_runs_is_recorded_and_changes_the_computation(model, cache):
    plain = run(model, {})
    cached = run(model, {"cache": cache})
    assert all(r["error"] is None for r in cached)
    assert json.loads(cached[0]["runtime_options"])["cache"]["kind"] == cache["kind"]
    # the cache skipped work: the images are close to, but not all exactly, the uncached ones
    diffs = [np.abs(decode_png(a["image"]).astype(int) - decode_png(b["image"]).astype(int))
             for a, b in zip(plain, cached, strict=True)]
    assert max(d.max() for d in diffs) > 0


def test_a_cache_run_twice_gives_the_same_images():
    """The cache's state is cleared after every call: nothing leaks from one batch into the next."""
    gen = ImageGenerator({"model": "tiny:dit"}, runtime={"device": "cpu", "cache": {
        "kind": "first_block", "threshold": 0.5}}, defaults={"steps": 6})
    first, second = gen.generate(ROWS), gen.generate(ROWS)
    assert [r["image"] for r in first] == [r["image"] for r in second]


def test_options_that_cannot_apply_are_refused(tmp_path):
    with pytest.raises(UserError, match="sd models have a UNet"):
        run("tiny:sd", {"cache": {"kind": "first_block"}})
    with pytest.raises(UserError, match="first_block does not work on sd3"):
        run("tiny:sd3", {"cache": {"kind": "first_block"}})
    with pytest.raises(UserError, match="pab does not work on dit models; it does on flux"):
        run("tiny:dit", {"cache": {"kind": "pab"}})
    with pytest.raises(UserError, match="mag_ratios"):
        run("tiny:dit", {"cache": {"kind": "magcache"}})
    with pytest.raises(UserError, match="names no repeated blocks"):
        run("tiny:dit", {"compile_regions": True})
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        run("tiny:flux", {"quantize": "int8_weight_only"})
    job = {"name": "j", "prompts": {"list": ["a"]}, "models": [{"model": "tiny:sd"}],
           "runtime": {"device": "cpu", "cache": {"kind": "first_block"},
                       "quantize": "int8_weight_only"}}
    with pytest.raises(SpecError) as caught:
        validate(job, base=tmp_path)
    paths = {p.path for p in caught.value.problems}
    assert paths == {"runtime.cache", "runtime.quantize"}
