"""evaluate_job end to end: real Ray actors, real Parquet, a real SQLite MLflow store."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from darkroom.evals.runner import evaluate_job
from darkroom.evals.scorers.features import load_extractor
from darkroom.evals.scorers.inception import INCEPTION_ENV, INCEPTION_FILE
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform.data import layout
from darkroom.platform.data.records import decode_png

pytestmark = pytest.mark.ray
PROMPTS = ["a red fox", "a lighthouse at dusk", "a bowl of soup", "two cats on a sofa",
           "an old map", "a bicycle in the rain"]  # conftest's, as write_run numbers them
JOB_SPEC = {"name": "smoke", "models": [{"model": "tiny:sd"}], "sweep": {"steps": [1, 2]}}


def _hashes(job_dir: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(job_dir.glob(f"*/{layout.IMAGES}/*.parquet"))}


def reference_folder(folder: Path, count: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def evaluated(ray_session, sd_job, tiny_clip_dir, tmp_path_factory):
    """The sd job evaluated once with every metric; MLflow in SQLite under a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow")
    before = _hashes(sd_job)
    spec = EvalSpec(metrics=["fid", "kid", "clip_score", "safety", "class_accuracy", "cmmd",
                             "precision", "recall", "pickscore"],
                    feature_extractor="tiny",
                    reference={"folder": str(reference_folder(root / "reference"))},
                    clip_model=str(tiny_clip_dir), pickscore_model=str(tiny_clip_dir),
                    kid_subset_size=10, batch_size=8, bootstrap={"resamples": 100})
    uri = f"sqlite:///{root}/mlflow.db"
    results = evaluate_job(sd_job, spec, TrackingSpec(uri=uri), experiment="smoke",
                           job_spec=JOB_SPEC)
    return {"results": {r["run_id"]: r for r in results}, "uri": uri, "root": root,
            "before": before, "spec": spec}


def test_every_metric_is_a_number_or_missing_with_a_reason(evaluated, sd_job):
    results = evaluated["results"]
    assert sorted(results) == ["run-ddim-1", "run-ddim-2", "run-euler-2"]
    for result in results.values():
        assert result["images"] == 18
        metrics = result["metrics"]
        for key in ("fid", "kid", "clip_score", "nsfw_rate", "cmmd", "precision", "recall",
                    "pickscore"):
            assert math.isfinite(metrics[key]), key
            # every resampleable metric has its interval, and it holds the value
            assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
        assert metrics["fid_ci_high"] > metrics["fid_ci_low"]
        assert "clip_prompts_truncated_ci_low" not in metrics  # a count, not resampled
        assert metrics["fid"] > 0 and metrics["nsfw_rate"] == 0.0
        assert "class_accuracy" not in result["metrics"]
        assert result["missing"]["class_accuracy"]  # tiny:sd is not class-conditional
    fids = {r["metrics"]["fid"] for r in results.values()}
    assert len(fids) == 3, "different runs, different images, different FID"


def test_scores_are_keyed_by_row_id_and_generated_files_untouched(evaluated, sd_job):
    assert _hashes(sd_job) == evaluated["before"]
    for run_dir in layout.run_dirs(sd_job):
        scores = pq.read_table(run_dir / layout.SCORES / "scores.parquet")
        images = layout.read_table(run_dir / layout.IMAGES, columns=["row_id"])
        assert sorted(scores.column("row_id").to_pylist()) == sorted(
            images.column("row_id").to_pylist())
        assert {"clip_score", "clip_truncated", "nsfw_score", "nsfw_flag"} <= set(
            scores.column_names)
        assert not any(p.name.startswith(".") for p in (run_dir / layout.SCORES).iterdir())


def test_fid_agrees_with_torchmetrics_on_the_same_images(evaluated, sd_job):
    """The whole path (Parquet -> actors -> features -> clean-fid math) against torchmetrics'
    FrechetInceptionDistance fed the same images through the same extractor."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = load_extractor("tiny")

    class Module(torch.nn.Module):
        num_features = extractor.num_features

        def forward(self, x):  # uint8 NCHW -> features
            return torch.from_numpy(extractor(list(x.permute(0, 2, 3, 1).numpy())))

    metric = FrechetInceptionDistance(feature=Module())
    reference = sorted((evaluated["root"] / "reference").glob("*.png"))
    real = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in reference])
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    table = layout.read_table(sd_job / "run-ddim-2" / layout.IMAGES, columns=["image"])
    fake = np.stack([decode_png(b) for b in table.column("image").to_pylist()])
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    expected = float(metric.compute())
    assert evaluated["results"]["run-ddim-2"]["metrics"]["fid"] == pytest.approx(expected,
                                                                                 rel=1e-3)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_parent_children_params_metrics_artifacts_tags(evaluated):
    client = _client(evaluated["uri"])
    experiment = client.get_experiment_by_name("smoke")
    # artifacts beside the SQLite file, not in whatever folder the process runs in
    assert experiment.artifact_location == (evaluated["root"] / "mlruns").as_uri()
    # MLflow 3's UI opens model experiments on the runs view, not the GenAI one
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("darkroom.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("darkroom.kind") == "run"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    by_id = {c.data.tags["darkroom.run_id"]: c for c in children}
    child = by_id["run-euler-2"]
    result = evaluated["results"]["run-euler-2"]
    assert result["mlflow_run_id"] == child.info.run_id
    assert child.info.status == "FINISHED"
    params = child.data.params
    assert params["model"] == "tiny:sd" and params["sampler"] == "euler"
    assert params["steps"] == "2" and params["guidance_scale"] == "5.0"
    assert params["seed"] == "0" and params["image_count"] == "18"
    assert params["model.revision"]
    metrics = child.data.metrics
    for key in ("fid", "kid", "clip_score", "nsfw_rate", "fid_ci_low", "fid_ci_high"):
        assert metrics[key] == pytest.approx(result["metrics"][key])
    assert metrics["images_per_s"] > 0 and metrics["seconds_per_image"] > 0
    assert "class_accuracy" not in metrics
    tags = child.data.tags
    assert tags["darkroom.missing.class_accuracy"] == result["missing"]["class_accuracy"]
    assert tags["darkroom.spec_hash"] and tags["darkroom.version.torch"]
    assert tags["darkroom.output"].endswith("run-euler-2")
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"contact_sheet.png", "job_spec.json", "metrics.json", "eval_protocol.json",
            "run.json"} <= names
    folder = evaluated["root"] / "downloads"
    folder.mkdir(exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(
        child.info.run_id, "metrics.json", str(folder))).read_text())
    assert logged["metrics"] == pytest.approx(result["metrics"])
    protocol = json.loads(Path(client.download_artifacts(
        child.info.run_id, "eval_protocol.json", str(folder))).read_text())
    assert protocol["extractor_protocol"]["extractor"] == "tiny"
    assert protocol["reference"]["count"] == 40 and protocol["backend"] == "cleanfid"
    sheet = Image.open(io.BytesIO(Path(client.download_artifacts(
        child.info.run_id, "contact_sheet.png", str(folder))).read_bytes()))
    assert sheet.size[0] >= 8 * 64 and np.asarray(sheet).std() > 10  # images, not a blank
    assert json.loads(Path(client.download_artifacts(
        child.info.run_id, "job_spec.json", str(folder))).read_text()) == JOB_SPEC


def test_again_offline_without_inception_updates_the_same_runs(evaluated, sd_job, monkeypatch,
                                                               tmp_path):
    """Re-evaluating updates the runs (no duplicates); with no Inception weights FID and KID are
    missing with the reason, the other metrics are still logged; a flagging threshold flags."""
    from darkroom.evals.scorers import inception

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inception, "CLEANFID_CACHE", tmp_path)
    spec = evaluated["spec"].model_copy(update={
        "feature_extractor": "inception", "safety": {"checker": "nudenet", "threshold": 0.0},
        "metrics": ["fid", "kid", "safety", "fd_dinov2", "pickscore", "fid_per_category"],
        "dinov2_model": str(tmp_path / "dinov2-large"),
        "pickscore_model": "yuvalkirstain/PickScore_v1"})
    spec = EvalSpec.model_validate(spec.model_dump())
    results = {r["run_id"]: r for r in evaluate_job(
        sd_job, spec, TrackingSpec(uri=evaluated["uri"]), experiment="smoke", job_spec=JOB_SPEC)}
    for run_id, result in results.items():
        assert INCEPTION_FILE in result["missing"]["fid"]
        assert INCEPTION_FILE in result["missing"]["kid"]
        assert str(tmp_path / "dinov2-large") in result["missing"]["fd_dinov2"]
        assert "eval.pickscore_model" in result["missing"]["pickscore"]
        assert INCEPTION_FILE in result["missing"]["fid_per_category"]
        assert result["metrics"]["nsfw_rate"] == 1.0  # threshold 0 flags every image
        assert result["mlflow_run_id"] == evaluated["results"][run_id]["mlflow_run_id"]
    client = _client(evaluated["uri"])
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if r.data.tags.get("darkroom.kind") == "run"]) == 3
    child = client.get_run(results["run-ddim-1"]["mlflow_run_id"])
    assert INCEPTION_FILE in child.data.tags["darkroom.missing.fid"]
    assert math.isnan(child.data.metrics["fid"])  # the old number no longer passes for current
    assert math.isnan(child.data.metrics["fid_ci_low"])  # nor its interval
    assert child.data.metrics["nsfw_rate"] == 1.0
    assert "darkroom.missing.class_accuracy" not in child.data.tags  # not asked this time
    history = client.get_metric_history(child.info.run_id, "fid")
    assert len(history) == 2 and math.isfinite(history[0].value)
    scores = pq.read_table(sd_job / "run-ddim-1" / layout.SCORES / "scores.parquet")
    assert all(scores.column("nsfw_flag").to_pylist())
    assert "clip_score" in scores.column_names  # kept from the first evaluation
    # flagged images are withheld from the contact sheet: grey tiles, no generated pixels
    sheet_path = client.download_artifacts(child.info.run_id, "contact_sheet.png", str(tmp_path))
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    tiles = sheet.reshape(-1, 96 + 40, sheet.shape[1], 3)[:, :96]  # 96 px image + 40 px caption
    assert (tiles == 128).all()


def test_features_are_cached_per_run_and_extractor(evaluated, sd_job, monkeypatch, tmp_path):
    """A second evaluation needing only features reads them from the run's cache: no pass over
    the images at all; per-category FID comes from the job's prompt file."""
    from darkroom.evals import runner
    from darkroom.evals.feature_cache import features_path
    from darkroom.evals.results import read_record
    from darkroom.evals.scorers.features import extractor_protocol

    run_dir = sd_job / "run-ddim-2"
    record = read_record(run_dir)  # an evaluation with other extractors keeps tiny's record
    protocol = record["protocols"]["tiny"]
    assert protocol == extractor_protocol("tiny")
    cache = pq.read_table(features_path(run_dir, "tiny", protocol))
    table = layout.read_table(run_dir / layout.IMAGES, columns=["row_id", "image"])
    first = dict(zip(table.column("row_id").to_pylist(), table.column("image").to_pylist(),
                     strict=True))
    cached = dict(zip(cache.column("row_id").to_pylist(), cache.column("features").to_pylist(),
                      strict=True))
    assert sorted(cached) == sorted(first)
    some = sorted(first)[:3]
    np.testing.assert_allclose([cached[r] for r in some],
                               load_extractor("tiny")([decode_png(first[r]) for r in some]),
                               rtol=1e-5, atol=1e-6)
    assert record["references"]["tiny"]["count"] == 40

    def no_pass(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(runner, "score_dataset", no_pass)
    prompts = tmp_path / "prompts.jsonl"  # the sd job's six prompts in two categories
    prompts.write_text("".join(json.dumps({"id": f"{i:04d}", "prompt": p,
                                           "category": "outdoor" if i % 2 else "indoor"}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    job_spec = {**JOB_SPEC, "prompts": {"file": str(prompts), "columns": {"id": "id"}}}
    spec = EvalSpec.model_validate({**evaluated["spec"].model_dump(),
                                    "metrics": ["fid", "precision", "fid_per_category"]})
    results = {r["run_id"]: r for r in evaluate_job(
        sd_job, spec, TrackingSpec(uri=evaluated["uri"]), experiment="smoke",
        job_spec=job_spec)}
    again, before = results["run-ddim-2"]["metrics"], evaluated["results"]["run-ddim-2"]
    assert again["fid"] == pytest.approx(before["metrics"]["fid"], rel=1e-6)
    assert again["precision"] == pytest.approx(before["metrics"]["precision"])
    assert set(again) >= {"fid_category.indoor", "fid_category.outdoor",
                          "fid_category.indoor_ci_low"}
    assert again["fid_category.indoor"] != again["fid_category.outdoor"]


def test_fd_dinov2_and_cmmd_through_the_actors(evaluated, sd_job, tiny_dinov2_dir,
                                               tiny_clip_dir):
    """FD-DINOv2 and CMMD end to end with small random-init models: their features extracted on
    the actors (and cached), reference statistics for each extractor, values with intervals."""
    from darkroom.evals.results import read_record

    spec = EvalSpec.model_validate({**evaluated["spec"].model_dump(),
                                    "metrics": ["fd_dinov2", "cmmd"],
                                    "dinov2_model": str(tiny_dinov2_dir)})
    results = evaluate_job(sd_job, spec, TrackingSpec(uri=evaluated["uri"]), experiment="smoke",
                           job_spec=JOB_SPEC, run_ids=["run-ddim-1"])
    metrics = results[0]["metrics"]
    assert metrics["fd_dinov2"] > 0 and metrics["cmmd"] == pytest.approx(
        evaluated["results"]["run-ddim-1"]["metrics"]["cmmd"], rel=1e-6)  # clip cached
    assert metrics["fd_dinov2_ci_low"] <= metrics["fd_dinov2"] <= metrics["fd_dinov2_ci_high"]
    record = read_record(sd_job / "run-ddim-1")
    assert record["protocols"]["dinov2"]["weights"] == str(tiny_dinov2_dir)
    assert record["references"]["dinov2"]["count"] == 40
