"""`darkroom compare`: ranked table, HTML report checked in headless Chromium, MLflow's REST API
read from a real `mlflow server`."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darkroom.cli import main
from darkroom.evals.reporting.job_log import log_job
from darkroom.evals.reporting.report_html import pareto_front
from darkroom.evals.results import RunResult
from darkroom.evals.spec import EvalSpec, TrackingSpec
from darkroom.platform.data import layout
from darkroom.platform.data.runinfo import read_run_info

CHROMIUM = shutil.which("chromium")
FIDS = {"run-ddim-1": 30.0, "run-ddim-2": 20.0, "run-euler-2": 25.0}
SPEEDS = {"run-ddim-1": 9.0, "run-ddim-2": 5.0, "run-euler-2": 4.0}


@pytest.fixture(scope="module")
def logged(sd_job, tmp_path_factory):
    """The sd job's runs logged to a SQLite MLflow store with given metrics (no Ray needed)."""
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    results = []
    for run_dir in layout.run_dirs(sd_job):
        timing = {"images": 18, "seconds": 18 / SPEEDS[run_dir.name],
                  "images_per_s": SPEEDS[run_dir.name]}
        results.append(RunResult(run_dir.name, run_dir, read_run_info(run_dir), timing, count=18,
                                 metrics={"fid": FIDS[run_dir.name],
                                          "fid_ci_low": FIDS[run_dir.name] - 1.5,
                                          "fid_ci_high": FIDS[run_dir.name] + 2.5},
                                 missing={"kid": "not asked"}))
    log_job(results, {"backend": "cleanfid"}, sd_job, TrackingSpec(uri=uri), experiment="cmp",
            job_spec={"name": "cmp"}, eval_spec=EvalSpec())
    return {"uri": uri, "root": root}


def test_pareto_front():
    # (speed, fid): lower fid is better; (1, 10) is beaten by (2, 9)
    points = [(1.0, 10.0), (2.0, 9.0), (3.0, 12.0), (0.5, 5.0), (3.0, 15.0)]
    assert pareto_front(points, higher_is_better=False) == [3, 1, 2]
    assert pareto_front(points, higher_is_better=True) == [4]  # fastest and best at once


def test_compare_prints_ranked_table_and_writes_a_report(logged, capsys):
    html = logged["root"] / "report.html"
    code = main(["compare", "--experiment", "cmp", "--metric", "fid", "--html", str(html),
                 "--tracking-uri", logged["uri"]])
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "Downloading artifacts" not in err  # no MLflow progress bar per run
    lines = [line for line in out.splitlines() if line.startswith("tiny:sd")]
    assert [line.split()[0] for line in lines] == [
        "tiny:sd-ddim-s2-g5.0", "tiny:sd-euler-s2-g5.0", "tiny:sd-ddim-s1-g5.0"]
    assert "20.0 ± 2.0" in lines[0] and f"report: {html}" in out  # value ± half its interval
    page = html.read_text()
    assert "20.0 ± 2.0" in page
    assert page.count('<img src="data:image/png;base64,') == 3
    assert page.count("<svg") == 2 and "Pareto front" in page

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=logged["uri"])
    experiment = client.get_experiment_by_name("cmp")
    compare_runs = client.search_runs([experiment.experiment_id],
                                      filter_string="tags.`darkroom.kind` = 'compare'")
    assert len(compare_runs) == 1
    names = {a.path for a in client.list_artifacts(compare_runs[0].info.run_id)}
    assert {"report.html", "table.txt"} <= names


def test_compare_bad_input_exits_2(logged, capsys):
    assert main(["compare", "--experiment", "cpm", "--tracking-uri", logged["uri"]]) == 2
    assert "did you mean `cmp`" in capsys.readouterr().err
    assert main(["compare", "--experiment", "cmp", "--metric", "fdi",
                 "--tracking-uri", logged["uri"]]) == 2
    assert "did you mean `fid`" in capsys.readouterr().err
    assert main(["compare", "--experiment", "cmp", "--baseline", "tiny:sd-ddim-s2-g5.O",
                 "--tracking-uri", logged["uri"]]) == 2
    assert "did you mean `tiny:sd-ddim-s2-g5.0`" in capsys.readouterr().err
    # these runs were logged without being evaluated: nothing to compare image by image
    assert main(["compare", "--experiment", "cmp", "--baseline", "tiny:sd-ddim-s2-g5.0",
                 "--tracking-uri", logged["uri"]]) == 2
    assert "has no eval record" in capsys.readouterr().err


def test_a_tampered_eval_record_is_a_note_not_a_failure(sd_job, tmp_path, capsys):
    """`scores/eval.json` edited into a list, or with `protocols` a string: that run is not
    compared, with a note, like any other unreadable run; the others are."""
    job_dir = tmp_path / "smoke"
    shutil.copytree(sd_job, job_dir)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = [RunResult(d.name, d, read_run_info(d), {}, count=18, metrics={"fid": 1.0 + i})
               for i, d in enumerate(layout.run_dirs(job_dir))]
    log_job(results, {}, job_dir, TrackingSpec(uri=uri), experiment="tampered",
            job_spec={"name": "tampered"}, eval_spec=EvalSpec())
    record = {"spec": EvalSpec(metrics=["clip_score"]).model_dump(mode="json"),
              "protocols": {}, "references": {}}
    damaged = {"run-ddim-1": record, "run-ddim-2": [record],
               "run-euler-2": {**record, "protocols": "tiny"}}
    for run, content in damaged.items():
        (job_dir / run / layout.SCORES).mkdir(exist_ok=True)
        (job_dir / run / layout.SCORES / "eval.json").write_text(json.dumps(content))
    code = main(["compare", "--experiment", "tampered", "--baseline", "tiny:sd-ddim-s1-g5.0",
                 "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and all("not compared" in n and "eval.json" in n for n in notes)
    assert {n.split()[1].rstrip(":") for n in notes} == {"tiny:sd-ddim-s2-g5.0",
                                                         "tiny:sd-euler-s2-g5.0"}


# -- the report in a real browser ---------------------------------------------------------------


async def _devtools(port: int, url: str) -> dict:
    """Open `url` over the Chrome DevTools Protocol; collect console errors, image states and a
    screenshot."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            events, counter = [], iter(range(1, 10_000))

            async def call(method: str, **params):
                ident = next(counter)
                await ws.send_json({"id": ident, "method": method, "params": params})
                while True:
                    message = json.loads((await ws.receive()).data)
                    if message.get("id") == ident:
                        return message.get("result", {})
                    events.append(message)

            for domain in ("Runtime", "Log", "Page"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                events.append(json.loads((await ws.receive()).data))
            images = await call("Runtime.evaluate", returnByValue=True, expression=(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth])"))
            shot = await call("Page.captureScreenshot", format="png")
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] == "error")]
    return {"errors": errors, "images": images["result"]["value"],
            "screenshot": base64.b64decode(shot["data"])}


def _open_in_chromium(url: str, profile: Path) -> dict:
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1400,1200", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        return asyncio.run(asyncio.wait_for(_devtools(port, url), 60))
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(logged, tmp_path):
    html = tmp_path / "report.html"
    assert main(["compare", "--experiment", "cmp", "--html", str(html),
                 "--tracking-uri", logged["uri"]]) == 0
    # the check itself must see an error when there is one
    control = tmp_path / "control.html"
    control.write_text("<!doctype html><title>x</title><script>console.error('boom')</script>")
    assert _open_in_chromium(control.as_uri(), tmp_path / "profile-control")["errors"]

    seen = _open_in_chromium(html.as_uri(), tmp_path / "profile")
    assert seen["errors"] == []
    assert len(seen["images"]) == 3
    assert all(complete and width > 0 for complete, width in seen["images"])
    shot = np.asarray(Image.open(io.BytesIO(seen["screenshot"])).convert("RGB"))
    (tmp_path / "screenshot.png").write_bytes(seen["screenshot"])
    colourful = (shot.max(axis=2).astype(int) - shot.min(axis=2)) > 60  # noise, not text
    assert colourful.mean() > 0.01, "the contact sheets should be visible in the screenshot"


# -- MLflow's REST API from a real server -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_runs_over_the_rest_api_of_a_real_mlflow_server(logged, tmp_path):
    import httpx

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", logged["uri"]],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                found = httpx.get(f"{base}/experiments/get-by-name",
                                  params={"experiment_name": "cmp"}, timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        assert found.status_code == 200
        experiment_id = found.json()["experiment"]["experiment_id"]
        runs = httpx.post(f"{base}/runs/search", timeout=10, json={
            "experiment_ids": [experiment_id],
            "filter": "tags.`darkroom.kind` = 'run'"}).json()["runs"]
        assert len(runs) == 3
        by_name = {r["info"]["run_name"]: r for r in runs}
        best = by_name["tiny:sd-ddim-s2-g5.0"]["data"]
        metrics = {m["key"]: m["value"] for m in best["metrics"]}
        params = {p["key"]: p["value"] for p in best["params"]}
        tags = {t["key"]: t["value"] for t in best["tags"]}
        assert metrics["fid"] == 20.0 and metrics["images_per_s"] == 5.0
        assert params["sampler"] == "ddim" and params["steps"] == "2"
        assert tags["darkroom.missing.kid"] == "not asked"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and its worker
        server.wait(timeout=30)


# -- verdicts over a whole table -----------------------------------------------------------------


def test_the_verdict_table_states_its_correction_and_its_tests():
    """23 runs against a baseline on 7 metrics: the header says which rate is kept and over how
    many tests; each row keeps its raw and adjusted p-value; a lone small effect that 5% per test
    would call is no longer called, a large one still is; a missing metric is not a test."""
    from darkroom.evals.metrics.bootstrap import difference
    from darkroom.evals.reporting.compare import baseline_table, baseline_title, correct
    from darkroom.evals.reporting.paired import Comparison

    rng = np.random.default_rng(0)
    keys = ["fid", "kid", "precision", "recall", "density", "coverage", "class_accuracy"]

    def table():
        out = []
        for run in range(23):
            diffs = {}
            for j, key in enumerate(keys):
                effect = 8.0 if (run, j) == (0, 0) else 2.3 if (run, j) == (1, 1) else 0.0
                reps = rng.normal(effect, 1.0, 500)
                diffs[key] = difference(effect, 0.0, reps, np.zeros(500), key != "fid",
                                        units=200)
            out.append(Comparison(f"run{run}", diffs,
                                  {"safety": "no checker"} if run == 2 else {}, []))
        return out

    raw = table()
    assert raw[1].differences["kid"].p_value < 0.05  # 5% per test would call it
    for method, strong_only in (("bh", True), ("holm", True), ("none", False)):
        comparisons = table()
        assert correct(comparisons, method, 0.05) == 161
        header, body, verdicts = baseline_table(comparisons, "fid")
        assert header[4:6] == ["p", "adjusted p"]
        assert comparisons[0].differences["fid"].verdict == "worse"
        called_kid = comparisons[1].differences["kid"].verdict != "no detectable difference"
        assert called_kid is not strong_only, method
        row = next(r for r in body if r[:2] == ["run1", "kid"])
        assert float(row[4]) < 0.05 and (float(row[5]) > float(row[4])) is (method != "none")
        assert next(r for r in body if r[1] == "safety")[4:7] == ["", "", "no checker"]
    title = baseline_title("base", 0.95, "bh", 161)
    assert "false-discovery rate at 5% over the 161 tests" in title and "Benjamini" in title
    assert "family-wise error rate" in baseline_title("base", 0.95, "holm", 161)
    assert "no correction" in baseline_title("base", 0.95, "none", 161)


def test_an_unknown_correction_exits_2(logged, capsys):
    assert main(["compare", "--experiment", "cmp", "--correction", "bonferoni",
                 "--tracking-uri", logged["uri"]]) == 2
    assert "--correction: unknown `bonferoni` (give bh, holm or none)" in capsys.readouterr().err


def test_compare_prints_each_format(logged, capsys):
    """The same ranking as a 120-column table, Markdown, CSV and JSON."""
    order = ["tiny:sd-ddim-s2-g5.0", "tiny:sd-euler-s2-g5.0", "tiny:sd-ddim-s1-g5.0"]
    printed = {}
    for output in ("table", "markdown", "csv", "json"):
        assert main(["compare", "--experiment", "cmp", "--metric", "fid", "--format", output,
                     "--tracking-uri", logged["uri"]]) == 0
        printed[output] = capsys.readouterr().out
    assert all(len(line) <= 120 for line in printed["table"].splitlines()), printed["table"]
    rows = [line for line in printed["markdown"].splitlines() if line.startswith("| tiny:")]
    assert [r.split("|")[1].strip() for r in rows] == order
    records = list(csv.DictReader(io.StringIO(printed["csv"].split("\n\n")[0])))
    assert [r["run"] for r in records] == order and float(records[0]["fid"]) == 20.0
    parsed = json.loads(printed["json"])
    assert parsed["metric"] == "fid" and [r["run"] for r in parsed["runs"]] == order
    with pytest.raises(SystemExit) as bad:
        main(["compare", "--experiment", "cmp", "--format", "yaml", "--tracking-uri",
              logged["uri"]])
    assert bad.value.code == 2 and "invalid choice: 'yaml'" in capsys.readouterr().err
