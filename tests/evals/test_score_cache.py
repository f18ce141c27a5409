"""The per-row score cache of a part: a row is reused while its image, prompt and metadata are
unchanged and its numbers finite; the scoring actor does not give a part the rows its cache
holds."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from darkroom.evals.score_cache import cache_path, input_hashes, read_scores, write_scores
from darkroom.evals.scorers.actor import ScoringActor
from darkroom.evals.scorers.plan import ScorePlan
from darkroom.evals.units import PlannedPart

PROTOCOL = {"judge": {"model": "m"}, "question": "Does this show {}?"}


def test_rows_are_reused_while_what_the_part_read_is_unchanged(make_run, tmp_path):
    run_dir = make_run(tmp_path / "job", "run-a", prompts=["a fox", "a map"],
                       images_per_prompt=2)
    inputs = input_hashes(run_dir)
    rows = sorted(inputs)
    values = np.array([0.25, np.nan, 0.5, 0.75])
    write_scores(run_dir, "vqascore", PROTOCOL,
                 {"row_id": np.array(rows, dtype=object), "vqascore": values,
                  "vqascore_error": np.array(["", "HTTP 503", "", ""], dtype=object)}, inputs)
    hits = read_scores(run_dir, "vqascore", PROTOCOL, ["vqascore", "vqascore_error"], inputs)
    assert set(hits) == {rows[0], rows[2], rows[3]}  # the NaN row is asked again
    assert hits[rows[2]] == {"vqascore": 0.5, "vqascore_error": ""}
    # another template is another file; a changed prompt or metadata is another input
    assert read_scores(run_dir, "vqascore", {**PROTOCOL, "question": "x"}, ["vqascore"],
                       inputs) == {}
    assert input_hashes(run_dir, metadata={"0000": '{"questions": []}'}) != inputs
    changed = {**inputs, rows[0]: "another image"}
    assert rows[0] not in read_scores(run_dir, "vqascore", PROTOCOL, ["vqascore"], changed)
    # a write keeps the valid rows it did not score
    write_scores(run_dir, "vqascore", PROTOCOL,
                 {"row_id": np.array([rows[1]], dtype=object), "vqascore": np.array([0.125]),
                  "vqascore_error": np.array([""], dtype=object)}, inputs)
    kept = pq.read_table(cache_path(run_dir, "vqascore", PROTOCOL)).to_pydict()
    assert kept["row_id"] == rows and kept["vqascore"] == [0.25, 0.125, 0.5, 0.75]


def test_a_damaged_cache_is_an_empty_one(make_run, tmp_path):
    run_dir = make_run(tmp_path / "job", "run-a", prompts=["a fox"], images_per_prompt=1)
    inputs = input_hashes(run_dir)
    path = cache_path(run_dir, "vqascore", PROTOCOL)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not parquet")
    assert read_scores(run_dir, "vqascore", PROTOCOL, ["vqascore"], inputs) == {}


def test_the_actor_gives_a_part_only_the_rows_its_cache_does_not_hold(tiny_clip_dir):
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    batch = {"row_id": np.array(["a", "b", "c"], dtype=object),
             "group": np.array(["run", "run", "other"], dtype=object),
             "prompt": np.array(["a fox", "a map", "soup"], dtype=object),
             "image": np.array(encoded, dtype=object)}
    plan = ScorePlan(parts=(PlannedPart(scorer="clip", weights=str(tiny_clip_dir)),)).model_dump()
    full = ScoringActor(plan)(batch)
    partial = ScoringActor(plan, skip={"clip": {"run": ["b"], "other": ["a"]}})(batch)
    np.testing.assert_allclose(partial["clip_score"][[0, 2]], full["clip_score"][[0, 2]],
                               rtol=1e-6)
    assert np.isnan(partial["clip_score"][1]) and partial["clip_truncated"][1] is None
