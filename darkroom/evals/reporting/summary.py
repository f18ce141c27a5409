"""Intervals next to the values in MLflow: a run's metrics with ± half their 95% interval as tags
(`interval.<metric>`, a column of the runs table) and as the note on top of the run's page; the
job's parent run holds the ranked table (an MLflow table and its note)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW, HIGHER_IS_BETTER, higher_is_better
from darkroom.evals.reporting.tables import fmt, markdown, places

INTERVAL = "interval."
NOTE = "mlflow.note.content"
SPEED = "images_per_s"


def _interval(metrics: Mapping[str, float], key: str) -> tuple[float, float] | None:
    low, high = metrics.get(key + CI_LOW), metrics.get(key + CI_HIGH)
    return None if low is None or high is None else (low, high)


def values(metrics: Mapping[str, float]) -> dict[str, str]:
    """metric -> `value ± half-width [low, high]` (or the value alone) for every metric that
    is not an interval bound itself."""
    shown = {}
    for key, value in metrics.items():
        if key.endswith((CI_LOW, CI_HIGH)) or value != value:
            continue
        ci = _interval(metrics, key)
        if ci is None:
            shown[key] = str(int(value)) if float(value).is_integer() else fmt(value)
        else:
            at = places(ci)
            shown[key] = f"{fmt(value, ci)} [{ci[0]:.{at}f}, {ci[1]:.{at}f}]"
    return shown


def interval_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    """`interval.<metric>` tags: the value with its interval, for metrics that have one."""
    return {INTERVAL + k: v for k, v in values(metrics).items() if _interval(metrics, k)}


def run_note(name: str, metrics: Mapping[str, float], missing: Mapping[str, str],
             warnings: Sequence[str]) -> str:
    """The run page's note: its metrics with 95% intervals, the missing ones with reasons, and
    its warnings, in Markdown."""
    shown = values(metrics)
    def better(key: str) -> str:
        if key not in HIGHER_IS_BETTER and key != SPEED:
            return ""
        return "higher" if higher_is_better(key) else "lower"

    body = [[k, v, better(k)] for k, v in shown.items()]
    body += [[k, "missing", reason] for k, reason in missing.items()]
    lines = [f"**{name}**: metrics with ± half their 95% bootstrap interval [low, high]", "",
             markdown(["metric", "value", "better / why missing"], body)]
    if warnings:
        lines += ["", "Warnings:", *(f"- {w}" for w in warnings)]
    return "\n".join(lines)


def ranking(names: Mapping[str, str], metrics: Mapping[str, Mapping[str, float]], key: str
            ) -> list[dict[str, Any]]:
    """The job's runs best first by `key` (run id -> name, run id -> metrics): each run's
    name, then every metric's value and its interval's bounds."""
    sign = -1.0 if higher_is_better(key) else 1.0
    order = sorted(names, key=lambda r: (metrics[r].get(key) is None,
                                         sign * (metrics[r].get(key) or 0.0)))
    records = []
    for rank, run in enumerate(order, 1):
        record: dict[str, Any] = {"rank": rank, "run": names[run], "run_id": run}
        for k, v in metrics[run].items():
            record[k] = None if v != v else v
        records.append(record)
    return records


def ranking_note(records: Sequence[Mapping[str, Any]], key: str) -> str:
    """The parent run's note: the ranked table with intervals, in Markdown."""
    columns = [key, *(k for k in dict.fromkeys(k for r in records for k in r)
                      if k not in ("rank", "run", "run_id", key)
                      and not k.endswith((CI_LOW, CI_HIGH)))]
    body = [[r["rank"], r["run"], *(values({k: v for k, v in r.items()
                                            if isinstance(v, int | float)}).get(c, "missing")
                                     for c in columns)] for r in records]
    return "\n".join([f"Runs best first by {key}, each value ± half its 95% interval", "",
                      markdown(["rank", "run", *columns], body)])
