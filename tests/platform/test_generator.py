"""The ImageGenerator on every tiny family and sampler: shapes, reproducibility, errors, OOM
split."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from darkroom.platform.data.records import decode_png, encode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.engine.outputs import OUTPUT_COLUMNS
from darkroom.platform.families.conditioning import control_image
from darkroom.platform.samplers import SAMPLERS

FAMILIES = ["sd", "sdxl", "dit", "controlnet", "sd3", "flux", "t2i"]
# KDPM2-ancestral's two-step schedule on tiny:t2i's random weights overflows (a row error, as
# it should be): the sampler sweep runs the t2i family at three steps
STEPS = {"t2i": 3}
RNG = np.random.default_rng(0)
CONTROL = encode_png(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def generators() -> dict[str, ImageGenerator]:
    # tiny:flux's native size is Flux's 1024 px: every family at 64 px here
    sizes = {"width": 64, "height": 64}
    return {f: ImageGenerator({"model": f"tiny:{f}"}, runtime={"device": "cpu"}, defaults={
        "steps": STEPS.get(f, 2), **(sizes if f != "dit" else {})}) for f in FAMILIES}


def request(i: int, **extra) -> dict:
    row = {
        "row_id": f"r{i}", "prompt_id": f"p{i}", "sample_idx": 0, "seed": 1000 + i,
        "prompt": ["a red fox", "a lighthouse at dusk", "two cats", "a bowl of soup"][i % 4],
        "class_label": i % 10, "control_image": CONTROL,
    }
    row.update(extra)
    return row


def pixels(row: dict) -> np.ndarray:
    assert row["error"] is None, row["error"]
    return decode_png(row["image"]).astype(int)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_that_fits_runs_on_every_family(generators, family):
    gen = generators[family]
    fits = gen.fitting_samplers
    kind = "flow" if family in ("sd3", "flux") else "diffusion"
    assert fits == [n for n, s in SAMPLERS.items() if s.kind == kind and n != "flow_heun"
                    or n == "flow_heun" and family == "sd3"]
    rows = [request(i, sampler=name) for i, name in enumerate(fits)]
    out = gen.generate(rows)
    assert [r["row_id"] for r in out] == [r["row_id"] for r in rows]
    for row, name in zip(out, fits, strict=True):
        image = pixels(row)
        assert image.shape == (64, 64, 3)
        assert image.std() > 0  # not a blank image
        assert row["sampler"] == name
        assert SAMPLERS[name].scheduler in row["sampler_config"]
        assert row["steps"] == STEPS.get(family, 2) and row["model_family"] == family
        assert set(OUTPUT_COLUMNS) <= set(row)
    unfit = next(n for n in SAMPLERS if n not in fits)
    (row,) = gen.generate([request(0, sampler=unfit)])
    assert row["image"] is None and f"`{unfit}` does not fit {family}" in row["error"]


@pytest.mark.parametrize(("family", "sampler"), [
    (family, sampler) for family in ("sd", "dit", "sdxl", "t2i")
    for sampler in ("ddpm", "dpmpp_2m_sde")] + [
    (family, sampler) for family in ("sd3", "flux")
    for sampler in ("flow_euler", "flow_dpmpp_2m_sde")])  # deterministic, stochastic
def test_row_image_does_not_depend_on_batch_mates(generators, family, sampler):
    gen = generators[family]
    target = request(0, sampler=sampler, prompt="a red fox", class_label=3, seed=42)
    alone = gen.generate([target])[0]
    mates = [request(i, sampler=sampler, seed=7 * i) for i in range(1, 8)]
    in_batch = gen.generate(mates[:3] + [target] + mates[3:])
    assert in_batch[3]["batch_size"] == 8
    assert np.abs(pixels(alone) - pixels(in_batch[3])).max() <= 1
    # and the seed matters: another seed gives another image
    other = gen.generate([{**target, "seed": 43}])[0]
    assert np.abs(pixels(alone) - pixels(other)).max() > 10


def test_rows_group_by_settings(generators):
    rows = [request(0, steps=2), request(1, steps=3), request(2, steps=2)]
    out = generators["sd"].generate(rows)
    assert [r["batch_size"] for r in out] == [2, 1, 2]
    assert [r["steps"] for r in out] == [2, 3, 2]


def test_dit_labels_by_name_and_bad_labels(generators):
    gen = generators["dit"]
    by_name, by_id = gen.generate([request(0, class_label="three"), request(0, class_label=3)])
    assert by_name["class_label"] == 3
    assert np.array_equal(pixels(by_name), pixels(by_id))
    bad_name, prompt_only, out_of_range = gen.generate([
        request(0, class_label="thre"),
        request(1, class_label=None, prompt="a red fox"),
        request(2, class_label=5000),
    ])
    assert "did you mean `three`" in bad_name["error"]
    assert "class-conditional" in prompt_only["error"] and "a red fox" in prompt_only["error"]
    assert "class_label" in out_of_range["error"]
    dit_size = gen.generate([request(0, width=128, height=128)])[0]
    assert "64x64" in dit_size["error"]


def test_bad_sizes_are_row_errors(generators):
    good, bad = generators["sd"].generate([request(0, width=64, height=96),
                                           request(1, width=100, height=64)])
    assert pixels(good).shape == (96, 64, 3)
    assert bad["image"] is None
    assert "`width` must be a positive multiple of 8" in bad["error"] and "100" in bad["error"]


def test_controlnet_needs_a_readable_control_image(generators):
    gen = generators["controlnet"]
    missing, unreadable, fine = gen.generate([
        request(0, control_image=None), request(1, control_image=b"not an image"), request(2),
    ])
    assert "needs `control_image`" in missing["error"]
    assert "not a readable image" in unreadable["error"]
    assert fine["control_image_sha256"] and fine["error"] is None


def test_canny_preprocessor_changes_the_conditioning():
    plain = ImageGenerator({"model": "tiny:controlnet"}, defaults={"steps": 2})
    canny = ImageGenerator({"model": "tiny:controlnet", "control": {"preprocessor": "canny"}},
                           defaults={"steps": 2})
    control, _ = control_image(CONTROL, 64, 64, canny.spec.control, "tiny:controlnet")
    assert set(np.unique(np.asarray(control))) <= {0, 255}  # an edge map
    row = request(0)
    assert np.abs(pixels(plain.generate([row])[0]) - pixels(canny.generate([row])[0])).max() > 0


def test_sdxl_refiner_hand_off(tmp_path):
    from darkroom.platform.models.builds import save_tiny

    base = ImageGenerator({"model": "tiny:sdxl"}, defaults={"steps": 4})
    # the same weights as refiner: the hand-off continues the base's trajectory exactly
    same = ImageGenerator({"model": "tiny:sdxl", "refiner": "tiny:sdxl", "refiner_switch": 0.5},
                     defaults={"steps": 4})
    other_weights = save_tiny("sdxl", tmp_path / "refiner", seed=1)
    other = ImageGenerator({"model": "tiny:sdxl", "refiner": str(other_weights),
                            "refiner_switch": 0.5}, defaults={"steps": 4})
    plain = pixels(base.generate([request(0)])[0])
    assert np.abs(pixels(same.generate([request(0)])[0]) - plain).max() <= 1
    assert np.abs(pixels(other.generate([request(0)])[0]) - plain).max() > 10


def test_oom_splits_the_batch_in_halves(generators, monkeypatch):
    gen = generators["sd"]
    rows = [request(i) for i in range(4)]
    expected = [pixels(r) for r in gen.generate(rows)]
    real_call, calls_seen = gen.family.call, []

    def oom_once_for_big_batches(pipe, batch):
        calls_seen.append(len(batch.requests))
        if len(batch.requests) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(pipe, batch)

    monkeypatch.setattr(gen, "family", dataclasses.replace(gen.family,
                                                           call=oom_once_for_big_batches))
    out = gen.generate(rows)
    assert calls_seen == [4, 2, 2]
    assert [r["batch_size"] for r in out] == [2, 2, 2, 2]
    for got, want in zip(out, expected, strict=True):
        assert np.abs(pixels(got) - want).max() <= 1


def test_oom_on_a_single_row_fails_that_row(generators, monkeypatch):
    def always_oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    gen = generators["sd"]
    monkeypatch.setattr(gen, "family", dataclasses.replace(gen.family, call=always_oom))
    out = gen.generate([request(0), request(1)])
    assert all("out of GPU memory even alone" in r["error"] for r in out)
    assert all(r["image"] is None for r in out)


def test_auto_batch_size_learns_and_remembers_what_fits(monkeypatch, tmp_path):
    import functools

    from darkroom.platform.engine import generator as generator_module
    from darkroom.platform.engine.autobatch import BatchSizeMemory

    memory_file = tmp_path / "batch_sizes.json"
    monkeypatch.setattr(generator_module, "BatchSizeMemory",
                        functools.partial(BatchSizeMemory, memory_file))
    gen = ImageGenerator({"model": "tiny:sd"}, runtime={"batch_size": "auto"},
                         defaults={"steps": 2})
    real_call, calls_seen = gen.family.call, []

    def fits_two(pipe, batch):
        calls_seen.append(len(batch.requests))
        if len(batch.requests) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_call(pipe, batch)

    monkeypatch.setattr(gen, "family", dataclasses.replace(gen.family, call=fits_two))
    rows = [request(i) for i in range(8)]
    assert all(r["error"] is None for r in gen.generate(rows))
    assert calls_seen[:3] == [8, 4, 2]
    calls_seen.clear()
    gen.generate(rows)  # the learned size is used from the start
    assert calls_seen == [2, 2, 2, 2]
    calls_seen.clear()
    fresh = ImageGenerator({"model": "tiny:sd"}, runtime={"batch_size": "auto"},
                           defaults={"steps": 2})
    monkeypatch.setattr(fresh, "family", dataclasses.replace(fresh.family, call=fits_two))
    fresh.generate(rows[:4])  # and remembered across processes (a file in the cache)
    assert calls_seen == [2, 2]
    assert list(json.loads(memory_file.read_text()).values()) == [2]
    other_size = [request(i, width=32, height=32) for i in range(3)]
    calls_seen.clear()
    fresh.generate(other_size)  # per image size: nothing known yet for 32x32
    assert calls_seen[0] == 3


def test_fixed_batch_size_caps_rows_per_call():
    gen = ImageGenerator({"model": "tiny:sd"}, runtime={"batch_size": 3}, defaults={"steps": 2})
    out = gen.generate([request(i) for i in range(7)])
    assert [r["batch_size"] for r in out] == [3, 3, 3, 3, 3, 3, 1]


def test_text_models_record_the_class_a_prompt_asks_for(generators):
    asked, unlabeled = generators["sd"].generate([
        request(0, prompt="a handwritten seven", class_label=7),
        request(1, prompt="a red fox", class_label=None),
    ])
    assert asked["class_label"] == 7 and unlabeled["class_label"] is None
    plain = generators["sd"].generate([request(0, prompt="a handwritten seven", class_label=None)])
    assert np.array_equal(pixels(asked), pixels(plain[0]))  # a label never changes a text image
