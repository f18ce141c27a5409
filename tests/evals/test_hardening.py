"""Evaluation against what goes wrong in real folders, end to end on real Ray, real Parquet and a
real SQLite MLflow store: a job narrowed after it ran, one prompt per class, NaN in a feature
cache, images whose headers declare far more pixels than their rows; and what `darkroom run`
prints when its job has an `eval:` section."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from darkroom.cli import main
from darkroom.evals.feature_cache import features_path
from darkroom.evals.results import read_record
from darkroom.platform.data import layout
from tests.evals.scorers.test_images import png_bomb

pytestmark = pytest.mark.ray


def reference_folder(folder: Path, count: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def job(ray_session, tmp_path_factory):
    """A class-conditional job (6 classes, one prompt each, 3 images a class; two runs) run
    with its eval: section, then narrowed to 3 classes x 1 image and run again."""
    root = tmp_path_factory.mktemp("hardening")
    uri = f"sqlite:///{root}/mlflow.db"
    path = root / "job.yaml"
    path.write_text(json.dumps({
        "name": "hardened", "output": str(root / "out"),
        "prompts": {"classes": [0, 1, 2, 3, 4, 5], "images_per_prompt": 3},
        "models": [{"model": "tiny:dit"}],
        "sweep": {"sampler": ["ddim"], "steps": [1, 2], "guidance_scale": [1.5]},
        "generation": {"batch_size": 18}, "compute": {"actors": {"min": 1, "max": 1}},
        "runtime": {"device": "cpu"},
        "eval": {"metrics": ["fid", "kid", "safety", "pickscore"], "feature_extractor": "tiny",
                 "reference": {"folder": str(reference_folder(root / "reference"))},
                 "pickscore_model": str(root / "no-pickscore"), "kid_subset_size": 10,
                 "batch_size": 18, "bootstrap": {"resamples": 100}},
        "tracking": {"uri": uri},
    }))
    wide = _run("run", str(path))
    narrow = _run("run", str(path), "prompts.limit=3", "prompts.images_per_prompt=1")
    job_dir = root / "out" / "hardened"
    runs = {layout.read_json(d / layout.RUN_INFO)["steps"]: d for d in layout.run_dirs(job_dir)}
    return {"root": root, "uri": uri, "path": path, "job_dir": job_dir, "runs": runs,
            "wide": wide, "narrow": narrow}


def _mlflow_runs(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hardened")
    found = client.search_runs([experiment.experiment_id],
                               filter_string="tags.`darkroom.kind` = 'run'")
    return client, {r.data.tags["darkroom.run_id"]: r for r in found}


def test_run_prints_the_ranked_table_with_intervals_and_the_ui_command(job):
    code, out = job["wide"]
    assert code == 0, out
    assert "evaluation: 2 run(s) of experiment `hardened`, best fid first" in out, out[-3000:]
    lines = out[out.index("evaluation: "):].splitlines()
    assert lines[1].split()[:7] == ["run", "model", "sampler", "steps", "guidance", "images",
                                    "fid"]
    assert all(line.startswith("tiny:dit-ddim-s") and " ± " in line for line in lines[3:5]), out
    assert "missing: pickscore in 2 run(s):" in out and "no-pickscore" in out
    database = (job["root"] / "mlflow.db").resolve()
    assert f"Open the runs in MLflow's UI:  mlflow ui --backend-store-uri sqlite:///{database}" \
        in out


def test_one_prompt_per_class_gets_intervals_that_are_not_zero_wide(job):
    """Each class is one prompt here: its images are resampled. The narrowed job has one image
    per class, nothing to resample: the interval is zero wide and the run says why."""
    client, runs = _mlflow_runs(job["uri"])
    for run in runs.values():
        low = client.get_metric_history(run.info.run_id, "fid_ci_low")[0].value
        high = client.get_metric_history(run.info.run_id, "fid_ci_high")[0].value
        assert high - low > 1e-3, (low, high)  # the wide job: 6 classes x 3 images
        metrics, warnings = run.data.metrics, run.data.tags["darkroom.warnings"]
        assert metrics["fid_ci_low"] == metrics["fid_ci_high"]  # the narrowed one: 3 x 1
        why = next(w for w in warnings.splitlines() if "zero width: nothing to resample" in w)
        assert "fid" in why.split("the interval of ")[1].split(" has zero width")[0].split(", ")


def test_a_narrowed_job_counts_the_rows_its_spec_asks_for(job):
    """18 rows a run were made; the spec now asks for 3: the summary, timing.json, the
    evaluation, MLflow and compare's reading of the folder all count 3."""
    from darkroom.evals.reporting.paired import load_run

    code, out = job["narrow"]
    assert code == 0, out
    assert "nothing to generate: all 6 rows of 2 run(s)" in out
    for run_dir in job["runs"].values():
        # the summary names a run as compare does, its folder last
        line = next(x for x in out.splitlines() if x.endswith(f"  {run_dir.name}"))
        assert line.split()[1:4] == ["3", "0", "0"], line  # images, new, errors
        timing = layout.read_json(run_dir / layout.TIMING)
        assert timing["images"] == 3 and timing["errors"] == 0
        assert timing["images_per_s"] == pytest.approx(3 / timing["seconds"], rel=1e-2)
        assert load_run("r", run_dir).scores.count == 3
    _, runs = _mlflow_runs(job["uri"])
    for run in runs.values():
        assert run.data.metrics["images"] == 3
        assert "15 of the run's 18 image rows are not in its current spec" in \
            run.data.tags["darkroom.warnings"]
    names = {x.split()[0] for x in out.splitlines() if x.startswith("tiny:dit-ddim-s")}
    assert len(names) == 2, out  # the summary and the evaluation name the same two runs


def _poison(run_dir: Path) -> Path:
    """One NaN written into the run's tiny feature cache, as a damaged file would hold it."""
    path = features_path(run_dir, "tiny", read_record(run_dir)["protocols"]["tiny"])
    table = pq.read_table(path)
    values = np.asarray(table.column("features").combine_chunks().flatten()).copy()
    values[3] = np.nan  # the first row's
    width = len(values) // table.num_rows
    table = table.set_column(2, "features", pa.FixedSizeListArray.from_arrays(
        pa.array(values, pa.float32()), width)).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, path)
    return path


def test_nan_in_cached_features_is_never_a_number(job):
    """compare reads the damaged cache as missing (not `+nan ... no detectable difference`);
    evaluating again extracts the features again and logs finite numbers."""
    base, other = job["runs"][1], job["runs"][2]
    path = _poison(other)
    code, out = _run("compare", "--experiment", "hardened", "--tracking-uri", job["uri"],
                     "--baseline", base.name)
    assert code == 0, out
    assert "nan" not in out.lower(), out
    # the table wraps at 120 columns: each block of columns has its own line for kid
    kid = " ".join(x for x in out.splitlines() if x.split()[1:2] == ["kid"])
    assert "missing" in kid and "evaluate it again" in kid, out

    code, out = _run("eval", str(job["job_dir"]), "--tracking-uri", job["uri"], "--json")
    assert code == 0, out
    results = {r["run_id"]: r for r in json.loads(out[out.index("[\n"):])}
    for key in ("fid", "kid"):
        assert math.isfinite(results[other.name]["metrics"][key]), results[other.name]
    values = np.asarray(pq.read_table(path).column("features").combine_chunks().flatten())
    assert np.isfinite(values).all()  # extracted again and kept


def test_images_declaring_far_more_pixels_than_their_row_are_left_out(job, make_run, tmp_path):
    """Two 9000 x 9000 PNGs (in a Parquet file of a few hundred KB) among rows that say 64 x
    64: unreadable rows with the reason, out of every metric; the others are scored."""
    from darkroom.evals.results import left_out
    from darkroom.evals.runner import evaluate_job
    from darkroom.evals.spec import EvalSpec, TrackingSpec

    run_dir = make_run(tmp_path / "bombs", "run-a", images_per_prompt=1)
    table = pq.read_table(run_dir / layout.IMAGES / "part-0.parquet").slice(0, 2)
    bomb = png_bomb(9000)
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array([bomb, bomb], pa.binary()))
    for name, values in (("row_id", ["0006-00", "0007-00"]), ("prompt_id", ["0006", "0007"])):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    pq.write_table(table, run_dir / layout.IMAGES / "part-2.parquet")
    info = json.loads((run_dir / layout.RUN_INFO).read_text())
    (run_dir / layout.RUN_INFO).write_text(json.dumps({**info, "prompt_count": 8}))
    spec = EvalSpec(metrics=["fid", "safety"], feature_extractor="tiny",
                    reference={"folder": str(job["root"] / "reference")},  # cached
                    batch_size=8, bootstrap={"resamples": 50})
    [result] = evaluate_job(tmp_path / "bombs", spec,
                            TrackingSpec(uri=f"sqlite:///{tmp_path}/mlflow.db"),
                            experiment="bombs", job_spec={})
    assert result["images"] == 6 and result["rows_unreadable"] == 2
    assert math.isfinite(result["metrics"]["fid"]) and "nsfw_rate" in result["metrics"]
    reasons = left_out(run_dir)
    assert sorted(reasons) == ["0006-00", "0007-00"]
    assert all("declares 9000 x 9000 pixels, more than its row's 64 x 64" in r
               for r in reasons.values())
