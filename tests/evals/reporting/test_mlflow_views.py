"""What a job's evaluation shows in MLflow, read back through MLflow's client from a real
`mlflow server` (SQLite backend, local artifacts): the image grid, the per-image table, the
datasets, the logged models and the intervals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.evals.reporting.job_log import log_job
from darkroom.evals.results import RunResult
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform.data import layout
from darkroom.platform.data.runinfo import read_run_info

FIDS = {"run-ddim-1": 30.0, "run-ddim-2": 20.0, "run-euler-2": 25.0}
PROTOCOL = {"backend": "cleanfid", "references": {"inception": {
    "source": "builtin:tiny", "count": 50, "fingerprint": "abc123", "protocol": {"size": 299}}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sd_job, tmp_path_factory):
    """The sd job (with a per-image score) logged through a real `mlflow server`."""
    import httpx

    root = tmp_path_factory.mktemp("views")
    job_dir = root / "smoke"
    shutil.copytree(sd_job, job_dir)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--default-artifact-root", str(root / "artifacts")],
        cwd=root, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{uri}/health", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        results = []
        for i, run_dir in enumerate(layout.run_dirs(job_dir)):
            ids = pa.concat_tables(layout.read_file(p, ["row_id"]) for p in
                                   layout.parquet_files(run_dir / layout.IMAGES)).column("row_id")
            (run_dir / layout.SCORES).mkdir(exist_ok=True)
            pq.write_table(pa.table({"row_id": ids, "clip_score": [0.1 * i + 0.01 * k
                                                                   for k in range(len(ids))]}),
                           run_dir / layout.SCORES / "scores.parquet")
            fid = FIDS[run_dir.name]
            results.append(RunResult(run_dir.name, run_dir, read_run_info(run_dir),
                                     {"images": 18, "seconds": 3.0, "images_per_s": 6.0},
                                     count=18, metrics={"fid": fid, "fid_ci_low": fid - 1.5,
                                                        "fid_ci_high": fid + 2.5}))
        log_job(results, PROTOCOL, job_dir, TrackingSpec(uri=uri, grid_prompts=4,
                                                         grid_samples=2, table_rows=10),
                experiment="views", job_spec={"name": "views"}, eval_spec=EvalSpec())
        yield {"uri": uri, "results": results}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _table(client, run_id: str, path: str) -> dict[str, list]:
    """A table logged with `mlflow.log_table`, read through this server's client (MLflow's own
    `load_table` searches runs through the global tracking URI)."""
    import json

    with open(client.download_artifacts(run_id, path)) as f:
        doc = json.load(f)
    return {c: [row[i] for row in doc["data"]] for i, c in enumerate(doc["columns"])}


def _runs(client):
    exp = client.get_experiment_by_name("views").experiment_id
    runs = client.search_runs([exp], filter_string="tags.`darkroom.kind` = 'run'")
    return exp, {r.info.run_name: r for r in runs}


def _grid(client, run_id) -> dict[str, set[int]]:
    keys: dict[str, set[int]] = {}
    for item in client.list_artifacts(run_id, "images"):
        name = item.path.rsplit("/", 1)[-1]
        found = re.fullmatch(r"(.+)\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png", name)
        if found:
            keys.setdefault(found[1], set()).add(int(found[2]))
    return keys


@pytest.mark.slow
def test_grid_table_datasets_models_and_intervals_through_a_real_server(server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server["uri"])
    exp, runs = _runs(client)
    assert len(runs) == 3
    # the image grid: the same 4 prompt keys in every run, steps 0 and 1 (2 samples)
    grids = [_grid(client, r.info.run_id) for r in runs.values()]
    assert len(grids[0]) == 4 and all(g == grids[0] for g in grids)
    assert all(steps == {0, 1} for steps in grids[0].values())
    assert all(r.data.tags["mlflow.loggedImages"] == "True" for r in runs.values())
    # the per-image table: a bounded sample with images, every row in the Parquet file
    best = runs["tiny:sd-ddim-s2-g5.0"]
    table = _table(client, best.info.run_id, "images_table.json")
    assert len(table["prompt"]) == 10
    assert {"prompt", "seed", "sampler", "steps", "guidance_scale", "image",
            "clip_score"} <= set(table)
    full = client.download_artifacts(best.info.run_id, "images_table.parquet")
    assert pq.read_table(full).num_rows == 18
    assert '"images_table.json"' in best.data.tags["mlflow.loggedArtifacts"]
    # datasets: the same prompt set (one digest) in every run, the reference statistics
    inputs = [client.get_run(r.info.run_id).inputs for r in runs.values()]
    digests = [{d.dataset.name: d.dataset.digest for d in i.dataset_inputs} for i in inputs]
    assert all(d == digests[0] for d in digests) and len(digests[0]) == 2
    assert any(name.startswith("reference builtin:tiny") for name in digests[0])
    # one logged model (tiny:sd), linked to every run, carrying the best run's FID
    models = client.search_logged_models([exp], order_by=[{"field_name": "metrics.fid",
                                                           "ascending": True}])
    assert len(models) == 1
    assert all([m.model_id for m in i.model_inputs] == [models[0].model_id] for i in inputs)
    # the model carries every run's FID; the latest one (what `order_by` ranks by) is the best
    fids = sorted((m.timestamp, m.value) for m in models[0].metrics if m.key == "fid")
    assert sorted(v for _, v in fids) == sorted(FIDS.values())
    assert fids[-1][1] == 20.0
    # intervals beside the values, and the ranked table on the parent run
    assert best.data.tags["interval.fid"] == "20.0 ± 2.0 [18.5, 22.5]"
    parent = client.get_run(best.data.tags["mlflow.parentRunId"])
    assert "ranking.json" in parent.data.tags["mlflow.loggedArtifacts"]
    ranking = _table(client, parent.info.run_id, "ranking.json")
    assert ranking["run"][0] == "tiny:sd-ddim-s2-g5.0"


def test_the_grid_prompts_depend_only_on_the_ids_and_are_spread_over_categories():
    from darkroom.evals.reporting.views import spread_prompts

    categories = {f"p{i}": ("cat", "dog", "car")[i % 3] for i in range(30)}
    chosen = spread_prompts(categories, 6)
    shuffled = dict(reversed(list(categories.items())))  # another run reads them in another order
    assert spread_prompts(shuffled, 6) == chosen and len(set(chosen)) == 6
    assert sorted(categories[p] for p in chosen) == ["car", "car", "cat", "cat", "dog", "dog"]
    assert chosen != [f"p{i}" for i in range(6)]  # by hash, not the file's first rows
    assert spread_prompts(categories, 100) == spread_prompts(shuffled, 100)
    assert len(spread_prompts(categories, 100)) == 30
