"""`darkroom arena` end to end without a server: bad input is exit 2 with the field and the fix;
--export, --results and --log on stored votes; judges' agreement from per-image scores and a
pairwise judgements table; the human strengths in `darkroom compare` and its report."""

from __future__ import annotations

import json
import shutil
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkroom.cli import main
from darkroom.evals.arena.commands import build_round, job_and_runs
from darkroom.evals.arena.store import EXPORT_SCHEMA, VoteStore
from darkroom.evals.results import SCORES_FILE
from darkroom.platform.data import layout


def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'votes.sqlite'}"


@pytest.mark.parametrize("case", ["one run", "two jobs", "unknown run", "question", "store",
                                  "driver", "rater name", "no raters", "resamples", "port",
                                  "host"])
def test_bad_input_is_exit_2_naming_the_field(case, job, tmp_path, capsys):
    args = ["arena", str(job), "--store", store_url(tmp_path), "--raters", "alice"]
    expected = {"one run": "JOB_OR_RUNS", "two jobs": "different job folders",
                "unknown run": "--runs: no run `run-9`", "question": "--question takes ID=TEXT",
                "store": "--store", "driver": "driver", "rater name": "--raters",
                "no raters": "--raters alice,bob", "resamples": "--resamples",
                "port": "--port: port", "host": "--host: cannot listen on 192.0.2.1"}[case]
    holder = None
    if case == "one run":
        args[1] = str(job / "run-0")
    elif case == "two jobs":
        other = tmp_path / "other"
        other.mkdir()
        shutil.copytree(job / "run-1", other / "run-1")
        args[1:2] = [str(job / "run-0"), str(other / "run-1")]
    elif case == "unknown run":
        args += ["--runs", "run-0,run-9"]
    elif case == "question":
        args += ["--question", "Which is better?"]
    elif case == "store":
        args[3] = "not a url"
    elif case == "driver":
        args[3] = "postgresql+nosuchdriver://localhost/votes"
    elif case == "rater name":
        args[5] = "alice,bob smith"
    elif case == "no raters":
        args = args[:4] + ["--port", "0"]
    elif case == "resamples":
        args += ["--results", "--resamples", "3"]
    elif case == "port":
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        args += ["--port", str(holder.getsockname()[1])]
    elif case == "host":
        args += ["--host", "192.0.2.1", "--port", "0"]  # TEST-NET-1: no machine's own address
    try:
        assert main(args) == 2
    finally:
        if holder is not None:
            holder.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err


def cast(arena, answers) -> None:
    """Votes of the raters in `answers` (rater -> fn(run_a, run_b, key) -> answer) on every
    pair, run_a on the left for even prompts."""
    for rater, answer in answers.items():
        for a, b in arena.runs.run_pairs():
            for key in arena.runs.shared(a, b):
                left = a if int(key[0]) % 2 == 0 else b
                ticket = arena.store.issue(arena.name, rater, (*key, a, b), left)
                wanted = answer(a, b, key)  # the run preferred, or tie / both_bad
                given = wanted if wanted in ("tie", "both_bad") else (
                    "left" if wanted == left else "right")
                arena.store.vote(ticket, "overall", given)


def args_for(job, tmp_path, *more):
    from darkroom.cli import build_parser

    return build_parser().parse_args(["arena", str(job), "--store", store_url(tmp_path),
                                      "--raters", "alice,bob", "--resamples", "50", *more])


def test_export_results_and_judges_agreement(job, tmp_path, capsys):
    args = args_for(job, tmp_path)
    arena = build_round(args, {"name": "rounds"}, *job_and_runs(args.paths, args.runs))
    # people prefer the run with fewer steps (run-0 > run-1 > run-2), bob calls one prompt a tie
    cast(arena, {"alice": lambda a, b, key: a,
                 "bob": lambda a, b, key: "tie" if key[0] == "0003" else a})
    # pickscore agrees with them image by image, clip_score says the opposite
    for r, run in enumerate(arena.runs.ids):
        ids = [row.row_id for row in arena.runs.rows[run].values()]
        (job / run / layout.SCORES).mkdir()
        pq.write_table(pa.table({"row_id": ids, "pickscore": [20.0 - r] * len(ids),
                                 "clip_score": [0.2 + r / 10] * len(ids)}),
                       job / run / layout.SCORES / SCORES_FILE)
    (job / "judgements").mkdir()
    pq.write_table(pa.table({"judge": ["vlm"] * 3, "prompt_id": ["0000", "0001", "0002"],
                             "sample_idx": [0, 0, 0], "run_a": ["run-1", "run-0", "run-0"],
                             "run_b": ["run-0", "run-2", "run-1"],
                             "preferred": ["run-0", "run-2", "tie"]}),
                   job / "judgements" / "part-0.parquet")
    arena.store.close()

    export = tmp_path / "votes.parquet"
    assert main(["arena", str(job), "--store", store_url(tmp_path), "--export",
                 str(export), "--results", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    table = pq.read_table(export)
    assert table.schema.names == [name for name, _ in EXPORT_SCHEMA]
    assert table.num_rows == 2 * 36
    rows = table.to_pylist()
    assert all(r["preferred_run"] == min(r["left_run"], r["right_run"]) for r in rows
               if r["rater"] == "alice")
    assert sum(r["answer"] == "tie" for r in rows) == 6  # bob, prompt 3, three pairs x two
    ranking = [line.split()[1] for line in out.splitlines() if line.strip()[:2] in ("1 ", "2 ",
                                                                                  "3 ")]
    assert ranking == ["tiny-sd-ddim-s1-g5.0", "tiny-sd-ddim-s2-g5.0", "tiny-sd-ddim-s3-g5.0"]
    assert "judge pickscore (per-image): agrees with the human majority 100%" in out
    assert "judge clip_score (per-image): agrees with the human majority 0%" in out
    assert "judge vlm (pairwise): agrees with the human majority 33%" in out  # 1 of 3

    assert main(["arena", str(job), "--store", store_url(tmp_path), "--results", "--json",
                 "--resamples", "50"]) == 0
    data = json.loads(capsys.readouterr().out)
    [overall] = data["questions"]
    judges = {j["name"]: j["agreement"] for j in overall["judges"]}
    # prompt 3: alice against bob's tie is no majority, so 30 of the 36 pairs count
    assert judges["pickscore"]["units"] == 30 and judges["vlm"]["units"] == 3
    assert judges["a rater vs the others"]["units"] == 0  # two raters: no majority of others
    low, high = overall["strengths"][0]["low"], overall["strengths"][0]["high"]
    assert low < overall["strengths"][0]["strength"] < high


def test_log_puts_human_strengths_beside_the_automatic_metrics_in_compare(job, tmp_path,
                                                                          capsys):
    args = args_for(job, tmp_path)
    arena = build_round(args, {"name": "rounds"}, *job_and_runs(args.paths, args.runs))
    cast(arena, {"alice": lambda a, b, key: a, "bob": lambda a, b, key: b if key[1] else a})
    arena.store.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["arena", str(job), "--store", store_url(tmp_path), "--log", "--tracking-uri",
                 uri, "--resamples", "50"]) == 0
    assert "logged round rounds to MLflow experiment rounds" in capsys.readouterr().out
    report = tmp_path / "report.html"
    assert main(["compare", "--experiment", "rounds", "--metric", "human.overall.strength",
                 "--tracking-uri", uri, "--html", str(report)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "human.overall.strength" in table[0]
    ranked = [line.split()[0] for line in table[2:5]]
    assert ranked == ["tiny-sd-ddim-s1-g5.0", "tiny-sd-ddim-s2-g5.0", "tiny-sd-ddim-s3-g5.0"]
    assert " ± " in table[2]
    page = report.read_text()
    assert "Human preference" in page and "Krippendorff" in page
    # logging again updates the same MLflow runs instead of adding new ones
    assert main(["arena", str(job), "--store", store_url(tmp_path), "--log", "--tracking-uri",
                 uri, "--resamples", "50"]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rounds").experiment_id
    assert len(client.search_runs([experiment])) == 3 + 1 + 1  # runs, the round, compare


def test_a_store_is_shared_by_rounds_and_keeps_tokens_across_restarts(job, tmp_path):
    args = args_for(job, tmp_path)
    first = build_round(args, {"name": "rounds"}, *job_and_runs(args.paths, args.runs))
    tokens = first.tokens()
    first.store.close()
    again = build_round(args_for(job, tmp_path, "--raters", "carol"), {"name": "rounds"},
                        job, None)
    assert {n: t for n, t in again.tokens().items() if n != "carol"} == tokens
    assert again.tokens()["owner"][0] == "viewer"
    other = build_round(args_for(job, tmp_path, "--round", "second"), {}, job, None)
    assert set(other.tokens()) == {"alice", "bob", "owner"}
    assert other.tokens()["alice"] != tokens["alice"]  # a token is for one round
    assert VoteStore(store_url(tmp_path)).raters("rounds") == {
        "alice": "rater", "bob": "rater", "carol": "rater", "owner": "viewer"}


def test_arena_help_loads_no_web_framework_database_or_model_library():
    import subprocess
    import sys

    probe = ("import atexit, sys\n"
             "heavy = ('torch', 'diffusers', 'transformers', 'ray', 'fastapi', 'sqlalchemy')\n"
             "atexit.register(lambda: print('LOADED', *[m for m in heavy if m in sys.modules],"
             " file=sys.stderr))\n"
             "from darkroom.cli import main\n"
             "sys.exit(main(['arena', '--help']))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "LOADED"
