"""What readers take from a run folder: only the rows its current spec asks for."""

from __future__ import annotations

import json

import numpy as np

from darkroom.evals.categories import first_prompt_ids
from darkroom.evals.outputs import SpecRows, image_hashes, read_rows, spec_rows
from darkroom.platform.data import layout
from darkroom.platform.data.runinfo import read_run_info


def test_the_first_prompts_are_the_ones_the_jobs_keep(tmp_path):
    """Prompt ids by the jobs' own rule, `limit` applied as the jobs apply it."""
    from darkroom.jobs.prompts import load_prompts
    from darkroom.jobs.spec import PromptSource

    keyed = tmp_path / "keyed.jsonl"
    keyed.write_text("".join(json.dumps({"key": k, "prompt": f"p {k}"}) + "\n"
                             for k in ["k9", "k3", "k5", "k1"]))
    plain = tmp_path / "plain.csv"
    plain.write_text("prompt\n" + "".join(f"prompt {i}\n" for i in range(5)))
    sources = [{"file": str(keyed), "columns": {"id": "key"}}, {"file": str(plain)},
               {"list": [f"text {i}" for i in range(5)]}, {"classes": [3, 1, 4, 1, 5]}]
    for source in sources:
        kept = {p.prompt_id for p in load_prompts(PromptSource.model_validate(
            {**source, "limit": 2}))}
        everything = {p.prompt_id for p in load_prompts(PromptSource.model_validate(source))}
        ids, why = first_prompt_ids({"prompts": source}, 2)
        rows = SpecRows(first=2) if ids is None else SpecRows(ids=ids)
        mask = rows.mask(sorted(everything), [0] * len(everything))
        assert {p for p, keep in zip(sorted(everything), mask, strict=True) if keep} == kept, source
    assert "have no ids" in first_prompt_ids({"prompts": {"control_images": "x"}}, 2)[1]


def test_a_narrowed_run_is_read_as_its_spec_asks(make_run, tmp_path):
    """A run made with 6 prompts x 3 images, then narrowed to 2 prompts x 1 image (run.json
    and job.yaml rewritten, the old rows still on disk): readers see the 2 rows."""
    job_dir = tmp_path / "job"
    run_dir = make_run(job_dir, "run-a", images_per_prompt=3)
    info = json.loads((run_dir / layout.RUN_INFO).read_text())
    (run_dir / layout.RUN_INFO).write_text(json.dumps(
        {**info, "prompt_count": 2, "images_per_prompt": 1}))
    job_spec = {"prompts": {"list": ["a"] * 6, "limit": 2, "images_per_prompt": 1}}
    rows, warnings = spec_rows(run_dir, read_run_info(run_dir), job_spec)
    assert rows == SpecRows(images_per_prompt=1, first=2)
    assert "16 of the run's 18 image rows are not in its current spec" in warnings[0]
    assert "2 prompt(s) x 1 image(s)" in warnings[0]
    columns = read_rows(run_dir, rows=rows)
    assert list(columns["prompt_id"]) == ["0000", "0001"] and set(columns["sample_idx"]) == {0}
    assert sorted(image_hashes(run_dir, rows)) == ["0000-00", "0001-00"]

    # without job.yaml the prompts cannot be told apart: the samples still can, and it says so
    rows, warnings = spec_rows(run_dir, read_run_info(run_dir), {})
    assert rows == SpecRows(images_per_prompt=1)
    assert len(read_rows(run_dir, rows=rows)["row_id"]) == 6
    assert any("holds images of 6 prompts" in w and "all of them were evaluated" in w
               for w in warnings)
    assert np.all(SpecRows().mask(["x", None], [5, None]))  # no spec recorded: every row
