"""What `darkroom compare` gives besides the plain table: the comparison as Markdown, CSV or
JSON (`render`), and in MLflow (`log_comparison`): the report and the verdicts in the
experiment's `compare` run and in the parent run of every job whose runs were compared, where
people open the job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW
from darkroom.evals.reporting import tables, tracking
from darkroom.evals.reporting.paired import Comparison
from darkroom.platform.errors import UserError


def run_records(rows: Sequence[Any], columns: Sequence[str], real: Any = None) -> list[dict]:
    """The ranked table (compare's `RunRow`s, the real baseline) as plain data for CSV and
    JSON: each metric of `columns` with its interval's bounds."""
    records = []
    for r in rows:
        p = r.params
        record = {"run": r.display, "mlflow_run_id": r.run_id, "model": p.get("model"),
                  "sampler": p.get("sampler"), "steps": p.get("steps"),
                  "guidance_scale": p.get("guidance_scale"), "images": r.value("images")}
        for k in columns:
            ci = r.interval(k)
            record |= {k: r.value(k), k + CI_LOW: ci and ci[0], k + CI_HIGH: ci and ci[1]}
        records.append(record)
    if real is not None:
        record = {"run": "real vs real", "images": real.count}
        for k in columns:
            record |= {k: real.metrics.get(k), k + CI_LOW: real.metrics.get(k + CI_LOW),
                       k + CI_HIGH: real.metrics.get(k + CI_HIGH)}
        records.append(record)
    return records


def baseline_records(comparisons: Sequence[Comparison], key: str, correction: str = "bh"
                     ) -> list[dict]:
    """The baseline comparison as plain data: difference, interval bounds, the raw p-value (from
    the bootstrap: the inverted percentile interval) and the one adjusted by `correction` over
    the whole table, verdict, how."""
    records = []
    for c in comparisons:
        for k in sorted(c.differences, key=lambda k: (k != key, k)):
            d = c.differences[k]
            records.append({"run": c.run, "metric": k, "difference": d.delta,
                            "ci_low": d.interval.low if d.interval else None,
                            "ci_high": d.interval.high if d.interval else None,
                            "p_value": d.p_value, "adjusted_p_value": d.adjusted,
                            "correction": correction, "verdict": d.verdict,
                            "paired": d.paired})
        records += [{"run": c.run, "metric": name, "verdict": "missing", "reason": reason}
                    for name, reason in c.missing.items()]
    return records


def render(output: str, text: str, table: tuple[list[str], list[list[str]]],
           against: tuple | None, runs: list[dict], verdicts: list[dict], notes: list[str],
           experiment: str, key: str) -> str:
    """The comparison in one of `tables.FORMATS`."""
    if output == "table":
        return text
    if output == "markdown":
        parts = [tables.markdown(*table)]
        if against is not None:
            parts += ["", against[0], "", tables.markdown(against[1], against[2])]
        return "\n".join(parts + ([""] if notes else []) + [f"- {n}" for n in notes])
    if output == "csv":
        return "\n\n".join(part for part in (tables.as_csv(runs),
                                              verdicts and tables.as_csv(verdicts)) if part)
    if output == "json":
        return tables.as_json({"experiment": experiment, "metric": key, "runs": runs,
                               "baseline": verdicts if against is not None else None,
                               "notes": notes})
    raise UserError(f"--format: `{output}` is not one of {', '.join(tables.FORMATS)}")


def log_comparison(client, experiment: str, rows: Sequence[Any], key: str, text: str,
                    page: str | None, verdicts: list[dict]) -> None:
    """The report and the verdicts into the experiment's `compare` run and into the parent
    run of each job whose runs were compared."""
    exp = tracking.experiment_id(client, experiment)
    files: dict[str, str] = {"table.txt": text + "\n"}
    if page is not None:
        files["report.html"] = page
    if verdicts:
        files["verdicts.json"] = tables.as_json(verdicts)
    with tracking.run_scope(client, exp, tracking.path_key("compare", experiment), "compare",
                            {tracking.KIND: "compare", "darkroom.compare.metric": key}) as run:
        tracking.log_files(client, run, files)
    for parent in sorted({r.tags.get(tracking.PARENT) for r in rows} - {None}):
        tracking.log_files(client, parent, {f"compare/{name}": content
                                            for name, content in files.items()})
        if verdicts:
            tracking.log_table(client, parent, "compare/verdicts_table.json", verdicts)
