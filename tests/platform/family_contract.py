"""What every model family must do, as tests a family's test class inherits (in the spirit of
diffusers' `PipelineTesterMixin`): `tests/platform/test_family_contract.py` runs them for every
registered family, and a family defined elsewhere gets them by subclassing `FamilyContract`.

A minimal job file validates; a sampler of the wrong kind is refused at validate; the tiny
model builds and makes an image; an image does not depend on its batch-mates; `darkroom replay`
reproduces a stored row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from darkroom.jobs import output
from darkroom.jobs.jobfile import validate
from darkroom.jobs.plan import expand, request_rows, run_info
from darkroom.jobs.prompts import load_prompts
from darkroom.jobs.replay import replay
from darkroom.jobs.workers import OUTPUT_SCHEMA
from darkroom.platform.config import SpecError
from darkroom.platform.data.records import decode_png, encode_png
from darkroom.platform.engine.generator import ImageGenerator
from darkroom.platform.families import Family
from darkroom.platform.samplers import SAMPLERS

_GENERATORS: dict[str, ImageGenerator] = {}
SOURCE = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
MASK = np.zeros((64, 64, 3), np.uint8)
MASK[16:48, 16:48] = 255  # repaint the middle


def kind_of(family: Family) -> str:
    """The sampler kind of the family's tiny model."""
    return "diffusion" if family.samplers == "any" else family.samplers


def stochastic_sampler(family: Family) -> str:
    """A sampler that draws noise at every step, if one fits; else the first that fits."""
    fits = family.fitting(kind_of(family))
    return next((name for name in fits if SAMPLERS[name].stochastic), fits[0])


def prompt_source(family: Family, tmp_path) -> dict:
    """A small prompt source of the kind the family's conditioning takes."""
    kind = family.conditioning.sources[0]
    if kind == "images":
        folders = {"images": tmp_path / "images"}
        if "mask" in family.conditioning.inputs:
            folders["masks"] = tmp_path / "masks"
        for role, folder in folders.items():
            folder.mkdir(exist_ok=True)
            for name, image in (("a.png", SOURCE), ("b.png", SOURCE[::-1])):
                (folder / name).write_bytes(encode_png(MASK if role == "masks" else image))
        return {**{role: str(folder) for role, folder in folders.items()},
                "instruction": "make it a lighthouse"}
    if kind == "classes":
        return {"classes": [1, 2]}
    if kind == "control_images":
        folder = tmp_path / "control"
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for name in ("a.png", "b.png"):
            (folder / name).write_bytes(encode_png(rng.integers(0, 255, (64, 64, 3), np.uint8)))
        return {"control_images": str(folder), "control_prompt": "a lighthouse"}
    return {"list": ["a red fox", "a lighthouse at dusk"]}


def steps_of(family: Family) -> int:
    """Steps of the contract's calls: an edit runs int(steps x strength) of them, and some
    pipelines' default strength is 0.3."""
    return 4 if "strength" in family.edits else 2


def job(family: Family, tmp_path, **changes) -> dict:
    """A minimal job file of the family's tiny model."""
    data = {"name": f"contract-{family.name}", "output": str(tmp_path / "out"),
            "prompts": prompt_source(family, tmp_path),
            "models": [{"model": f"tiny:{family.name}"}],
            "sweep": {"sampler": [stochastic_sampler(family)], "steps": [steps_of(family)]},
            "runtime": {"device": "cpu"}}
    data.update(changes)
    return data


class FamilyContract:
    """The contract; a subclass provides a `family` fixture."""

    @pytest.fixture
    def generator(self, family: Family) -> ImageGenerator:
        if family.name not in _GENERATORS:
            _GENERATORS[family.name] = ImageGenerator(
                {"model": f"tiny:{family.name}"}, runtime={"device": "cpu"},
                defaults={"steps": steps_of(family), "width": 64, "height": 64}
                if not family.fixed_size else {"steps": steps_of(family)})
        return _GENERATORS[family.name]

    def test_a_minimal_job_validates(self, family, tmp_path):
        spec = validate(job(family, tmp_path), base=tmp_path)
        assert spec.models[0].model == f"tiny:{family.name}"

    def test_a_sampler_of_the_wrong_kind_is_refused_at_validate(self, family, tmp_path):
        wrong = "flow_euler" if kind_of(family) == "diffusion" else "ddim"
        with pytest.raises(SpecError) as caught:
            validate(job(family, tmp_path, sweep={"sampler": [wrong]}), base=tmp_path)
        messages = {p.path: p.message for p in caught.value.problems}
        assert f"`{wrong}` does not fit {family.name}" in messages["sweep.sampler.0.name"]

    def test_its_tiny_model_makes_an_image(self, generator, family):
        (row,) = generator.generate([self._row(family, seed=1)])
        assert row["error"] is None, row["error"]
        image = decode_png(row["image"])
        assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
        assert row["model_family"] == family.name and row["sampler"] in SAMPLERS

    def test_an_image_does_not_depend_on_its_batch_mates(self, generator, family):
        sampler = stochastic_sampler(family)
        target = self._row(family, seed=7, sampler=sampler)
        alone = generator.generate([target])[0]
        batch = generator.generate([self._row(family, seed=3, sampler=sampler), target,
                                    self._row(family, seed=5, sampler=sampler)])
        assert batch[1]["batch_size"] == 3
        difference = np.abs(decode_png(alone["image"]).astype(int)
                            - decode_png(batch[1]["image"]).astype(int)).max()
        assert difference <= 1, f"{family.name} with {sampler}: {difference}/255"

    def test_replay_reproduces_a_stored_row(self, generator, family, tmp_path):
        spec = validate(job(family, tmp_path), base=tmp_path)
        (run,) = expand(spec)
        prompts = load_prompts(spec.prompts)
        made = generator.generate(request_rows(spec, run, prompts))
        assert all(row["error"] is None for row in made)
        job_dir = tmp_path / "out" / spec.name
        output.write_job_files(job_dir, spec.dump(), [run_info(spec, run, len(prompts))])
        table = pa.Table.from_pylist([{c: row.get(c) for c in OUTPUT_SCHEMA.names}
                                      for row in made], schema=OUTPUT_SCHEMA)
        output.write_call(job_dir, table, "contract")
        found = replay(job_dir, made[-1]["row_id"], device="cpu")
        assert found.max_difference <= 1

    @staticmethod
    def _row(family: Family, seed: int, **settings) -> dict:
        row = {"seed": seed, "prompt": "a red fox", "class_label": "1", **settings}
        inputs = family.conditioning.inputs
        if "control" in inputs:
            row["control_image"] = encode_png(np.full((64, 64, 3), 128, np.uint8))
        if "image" in inputs:
            row["image"] = encode_png(SOURCE)
        if "mask" in inputs:
            row["mask"] = encode_png(MASK)
        return row
