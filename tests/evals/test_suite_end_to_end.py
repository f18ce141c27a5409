"""A benchmark suite through a whole job on real Ray: `darkroom run` with `prompts: {suite:
geneval2}` (a fixture in GenEval 2's own format) generates two runs, the judge scores them
(`vqascore`, `qa_alignment`), every per-image metric comes out per skill with its interval in
MLflow, `compare` shows the skill table and `compare --baseline` compares each skill paired."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from darkroom.cli import main
from darkroom.platform.data import layout
from tests.evals.suite_fixtures import write_suite

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SKILLS = ("attribute", "count", "object", "verb")  # the fixture's questions' skills


def test_a_suite_runs_generate_judge_per_skill_and_compare(ray_session, tiny_vlm_dir, tmp_path,
                                                           capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = {
        "name": "suite-e2e", "output": str(tmp_path / "out"),
        "prompts": {"suite": "geneval2", "file": str(write_suite("geneval2", tmp_path / "s")),
                    "images_per_prompt": 2},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"steps": [1, 2]},
        "generation": {"width": 32, "height": 32, "batch_size": 6},
        "runtime": {"device": "cpu"},
        "eval": {"judge": {"model": str(tiny_vlm_dir), "batch_size": 8},
                 "bootstrap": {"resamples": 200}},
        "tracking": {"uri": uri},
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()

    runs = layout.run_dirs(tmp_path / "out" / "suite-e2e")
    assert len(runs) == 2
    for run_dir in runs:
        scores = pq.read_table(run_dir / layout.SCORES / "scores.parquet").to_pylist()
        assert len(scores) == 6  # 3 prompts x 2 images
        for row in scores:  # every question's answer kept
            answers = json.loads(row["qa_answers"])
            assert answers and all(0 <= a["p"] <= 1 and a["skill"] in SKILLS for a in answers)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("suite-e2e")
    logged = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`darkroom.kind` = 'run'")
    assert len(logged) == 2
    for run in logged:
        metrics = run.data.metrics
        for skill in SKILLS:
            for key in (f"vqascore.skill.{skill}", f"qa_alignment_atoms.skill.{skill}"):
                assert 0 <= metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
        assert {"qa_alignment", "qa_alignment.atom_count.3", "vqascore"} <= set(metrics)

    assert main(["compare", "--experiment", "suite-e2e", "--metric", "vqascore",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "vqascore per skill" in out and all(s in out for s in SKILLS), out
    baseline = logged[0].data.tags["darkroom.run_id"]
    assert main(["compare", "--experiment", "suite-e2e", "--metric", "vqascore",
                 "--tracking-uri", uri, "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    for skill in SKILLS:  # same suite prompts and seeds in both runs: paired per skill
        assert re.search(rf"^\S+\s+vqascore\.skill\.{skill}\s.*\spaired$", out, re.M), out
    assert "unpaired" not in out, out
