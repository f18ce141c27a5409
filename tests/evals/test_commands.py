"""`darkroom eval` end to end, and its answers to bad input (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from darkroom.cli import main


@pytest.mark.ray
def test_eval_a_run_folder_with_settings_from_job_yaml(ray_session, make_run, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    job_dir = tmp_path / "out" / "digits-job"
    run_dir = make_run(job_dir, "run-dit", model="tiny:dit", classes=[0, 1, 2],
                        images_per_prompt=2)
    (job_dir / "job.yaml").write_text(
        "name: digits-job\neval:\n  metrics: [safety, class_accuracy]\n"
        "tracking: {experiment: from-yaml}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["eval", str(run_dir), "--safety-threshold", "0", "--tracking-uri", uri,
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(captured.out[captured.out.index("[\n"):])
    assert [r["run_id"] for r in results] == ["run-dit"]
    result = results[0]
    assert result["metrics"]["nsfw_rate"] == 1.0  # the flag's threshold over the yaml's default
    # class accuracy is the agreement of the classifier's reading (scores) with the asked label
    import pyarrow.parquet as pq

    from darkroom.platform.data import layout

    asked = layout.read_table(run_dir / layout.IMAGES, ["row_id", "class_label"])
    read = pq.read_table(run_dir / layout.SCORES / "scores.parquet", columns=[
        "row_id", "predicted_label"]).join(asked, "row_id").to_pylist()
    assert len(read) == 6
    agreement = np.mean([int(r["class_label"]) == r["predicted_label"] for r in read])
    assert result["metrics"]["class_accuracy"] == pytest.approx(agreement)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("from-yaml")
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`darkroom.kind` = 'run'")
    assert len(runs) == 1 and runs[0].data.params["image_count"] == "6"


def test_bad_input_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "fdi,safety"]) == 2
    assert "unknown metric `fdi`; did you mean `fid`?" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--reference", str(tmp_path / "nope")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "safety"]) == 2
    assert "no runs to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "fid"]) == 2
    assert "give `reference`" in capsys.readouterr().err


def test_bad_input_from_the_real_command_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "darkroom", "eval", str(tmp_path), "--metrics", "kid",
         "--feature-extractor", "inceptoin", "--reference", "builtin:digits"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "did you mean `inception`?" in done.stderr and "Traceback" not in done.stderr
