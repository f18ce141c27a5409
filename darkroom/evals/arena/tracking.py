"""A round's results in MLflow, beside the automatic metrics.

Each run's strength (with its interval), win rate and votes per question go on the run's own
MLflow run, the one `darkroom eval` logged (found by its key, or by its run id and output
folder; made, with the run's settings as params, when the run was never evaluated). The round
gets a run of its own (`darkroom.kind` = `arena`) with agreement between raters, the position-bias
check, each judge's agreement with the human majority, and the whole results as JSON.
Names of the keys: `darkroom.evals.reporting.human`.
"""

from __future__ import annotations

import time
from pathlib import Path

from darkroom.evals.arena.rankings import QuestionResult, Results, as_dict
from darkroom.evals.arena.source import Runs
from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW
from darkroom.evals.reporting import human, tracking
from darkroom.evals.reporting.naming import settings_of


def _with_interval(out: dict[str, float], name: str, value: float | None,
                   low: float | None = None, high: float | None = None) -> None:
    if value is None or value != value:
        return
    out[name] = float(value)
    if low is not None and high is not None:
        out[name + CI_LOW], out[name + CI_HIGH] = float(low), float(high)


def run_metrics(result: QuestionResult, run: str) -> dict[str, float]:
    """One run's numbers for one question."""
    out: dict[str, float] = {}
    for s in result.strengths:
        if s.run == run:
            _with_interval(out, human.key(result.question, human.STRENGTH), s.strength, s.low,
                           s.high)
            if s.votes:
                out[human.key(result.question, "win_rate")] = (s.wins + s.ties / 2) / s.votes
            out[human.key(result.question, "votes")] = s.votes
    return out


def round_metrics(result: QuestionResult) -> dict[str, float]:
    """A question's numbers that are about the round, not one run."""
    out: dict[str, float] = {}
    q = result.question
    out[human.key(q, "votes")], out[human.key(q, "raters")] = result.votes, result.raters
    if result.alpha is not None and result.alpha.units:
        ci = result.alpha.interval
        _with_interval(out, human.key(q, "alpha"), result.alpha.value, ci and ci.low,
                       ci and ci.high)
    if result.position is not None and result.position.decided:
        low, high = result.position.interval or (None, None)
        _with_interval(out, human.key(q, "left_share"), result.position.share, low, high)
        out[human.key(q, "position_p")] = result.position.p_value
    for judge in result.judges:
        ci = judge.agreement.interval
        _with_interval(out, human.key(q, human.AGREEMENT + judge.name), judge.agreement.value,
                       ci and ci.low, ci and ci.high)
    return out


def _log(client, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=items[start:start + 1000])


def _run_of(client, experiment: str, runs: Runs, run: str) -> str:
    """The MLflow run of a Darkroom run: the one evaluation logged, or a new one."""
    folder = runs.dirs[run]
    keys = {tracking.path_key("run", folder)}
    if isinstance(folder, Path):
        keys.add(tracking.path_key("run", folder.resolve()))
    for key in keys:
        found = client.search_runs([experiment], filter_string=f"tags.`{tracking.KEY}` = '{key}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
    tags = {tracking.KIND: "run", "darkroom.run_id": run, "darkroom.output": folder}
    with tracking.run_scope(client, experiment, tracking.path_key("run", folder),
                            runs.names[run], tags) as made:
        tracking.log_params(client, made, settings_of(runs.infos[run]))
    return made


def log_round(results: Results, runs: Runs, uri: str | None, experiment: str) -> str:
    """Log the results to MLflow; returns the round's MLflow run id."""
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, experiment)
    for run in runs.ids:
        metrics = {}
        for result in results.questions:
            metrics.update(run_metrics(result, run))
        if metrics:
            _log(client, _run_of(client, exp, runs, run), metrics)
    tags = {tracking.KIND: human.KIND, "darkroom.output": runs.job_dir,
            "darkroom.arena.round": results.round,
            **{human.key(q.question, "text"): q.text for q in results.questions}}
    with tracking.run_scope(client, exp, tracking.path_key("arena", runs.job_dir, results.round),
                            f"arena-{results.round}", tags) as run:
        metrics = {}
        for result in results.questions:
            metrics.update(round_metrics(result))
        _log(client, run, metrics)
        tracking.log_files(client, run, {"arena_results.json": tracking.to_json(
            as_dict(results))})
    return run
