"""Compare the runs of an experiment: a table on the terminal (each value with ± half its 95%
interval), optionally every run against a baseline run (difference, interval, verdict; paired
over shared prompts and seeds) and real images against the same reference, and a static HTML
report of all of it (`report_html.py`), which is also logged to MLflow in the experiment's `compare`
run.
"""

from __future__ import annotations

import math
import statistics as stats
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from darkroom.evals import registry
from darkroom.evals.metrics.bootstrap import verdict_at
from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW, SKILL, higher_is_better
from darkroom.evals.metrics.multiplicity import CORRECTIONS, adjust
from darkroom.evals.reporting import formats, human, tracking
from darkroom.evals.reporting.naming import distinct_names
from darkroom.evals.reporting.paired import (
    Comparison,
    RealBaseline,
    RunData,
    compare_runs,
    load_run,
    real_baseline,
)
from darkroom.evals.reporting.report_html import SPEED, report_html
from darkroom.evals.reporting.tables import fmt, format_table, places  # noqa: F401 (re-exported)
from darkroom.platform.data import storage
from darkroom.platform.errors import UserError, did_you_mean

QUALITY = [m.key for m in registry.metrics().values() if "*" not in m.key]


@dataclass
class RunRow:
    """One evaluated run of an experiment: its params, metrics and why any metric is missing."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    missing: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    display: str = ""

    def value(self, key: str) -> float | None:
        """The run's value of a metric, or None when it has none or it is NaN."""
        value = self.metrics.get(key)
        return None if value is None or math.isnan(value) else value

    def interval(self, key: str) -> tuple[float, float] | None:
        """The metric's logged interval (low, high), or None."""
        low, high = self.value(key + CI_LOW), self.value(key + CI_HIGH)
        return None if low is None or high is None or self.value(key) is None else (low, high)

    def shown(self, key: str) -> str:
        """`value ± half-width` (or the value alone, or `missing`)."""
        return fmt(self.value(key), self.interval(key))


def load_runs(client, experiment: str) -> list[RunRow]:
    """The sweep-point runs of an experiment (not parents, not compare runs)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment `{experiment}` at {client.tracking_uri};"
                        f"{did_you_mean(experiment, names) if names else ' there are none'}")
    runs = client.search_runs([found.experiment_id],
                              filter_string=f"tags.`{tracking.KIND}` = 'run'", max_results=5000)
    rows = []
    for run in runs:
        tags = run.data.tags
        missing = {k.removeprefix(tracking.MISSING): v for k, v in tags.items()
                   if k.startswith(tracking.MISSING)}
        rows.append(RunRow(run.info.run_id, run.info.run_name or run.info.run_id,
                           dict(run.data.params), dict(run.data.metrics), missing, dict(tags)))
    name_rows(rows)
    return sorted(rows, key=lambda r: r.display)


def name_rows(rows: list[RunRow]) -> None:
    """Each row's display name: its MLflow name, told apart from runs of other jobs that share
    it by the one naming rule, from the settings logged as params."""
    names = distinct_names({r.run_id: r.params for r in rows}, {r.run_id: r.name for r in rows})
    for row in rows:
        row.display = names[row.run_id]


def pick_metric(rows: list[RunRow], metric: str | None) -> str:
    """The metric key to rank by: the one asked for (a metric name or a raw key some run
    has), else the first quality metric any run has, else images/s."""
    present = sorted({k for r in rows for k in r.metrics if r.value(k) is not None})
    if metric is None:
        for key in QUALITY:
            if key in present:
                return key
        return SPEED
    key = registry.metrics()[metric].key if metric in registry.metrics() else metric
    if key not in present:
        raise UserError(f"no run has metric `{metric}`;{did_you_mean(key, present)}")
    return key


def rank(rows: list[RunRow], key: str) -> list[RunRow]:
    """Best first under the metric's direction; runs without it last."""
    sign = -1.0 if higher_is_better(key) else 1.0
    return sorted(rows, key=lambda r: (r.value(key) is None, sign * (r.value(key) or 0.0)))


def metric_columns(rows: list[RunRow], key: str) -> list[str]:
    """The table's metrics: the ranking one, images/s, then the other quality metrics some run
    has, per-category FID and the human-preference rankings."""
    extra = [k for k in QUALITY if k != key and any(r.value(k) is not None for r in rows)]
    extra += sorted({k for r in rows for k in r.metrics
                     if k.startswith("fid_category.") and not k.endswith((CI_LOW, CI_HIGH))})
    extra += [k for k in human.columns(rows) if k != key]  # from rating rounds (arena)
    return [key, SPEED, *extra]


def table_rows(rows: list[RunRow], key: str, real: RealBaseline | None = None
               ) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells: run params, then `metric_columns` (each as value ± half
    its interval); absent values read `missing`; the real-vs-real baseline last."""
    extra = metric_columns(rows, key)[2:]
    header = ["run", "model", "sampler", "steps", "guidance", "images", key, SPEED, *extra]
    body = []
    for r in rows:
        p = r.params
        cells = [r.display, p.get("model", ""), p.get("sampler", ""), p.get("steps", ""),
                 p.get("guidance_scale", ""), fmt(r.value("images"), digits=0)]
        cells += [r.shown(k) for k in (key, SPEED, *extra)]
        body.append(cells)
    if real is not None:
        def shown(k: str) -> str:
            if k not in real.metrics:
                return ""
            low, high = real.metrics.get(k + CI_LOW), real.metrics.get(k + CI_HIGH)
            return fmt(real.metrics[k], (low, high) if low is not None else None)

        body.append([f"real vs real: {real.count} reference images against the other "
                     f"{real.others}", "", "", "", "", str(real.count),
                     *[shown(k) for k in (key, SPEED, *extra)]])
    return header, body


def skill_tables(rows: list[RunRow], key: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per-image metrics the runs have per skill (`<key>.skill.<skill>`), the ranking metric
    first: for each, (title, header, cells) with a run a row and a skill a column."""
    found: dict[str, set[str]] = {}
    for r in rows:
        for k in r.metrics:
            if SKILL in k and not k.endswith((CI_LOW, CI_HIGH)) and r.value(k) is not None:
                base, skill = k.split(SKILL, 1)
                found.setdefault(base, set()).add(skill)
    tables = []
    for base in sorted(found, key=lambda b: (b != key, b)):
        skills = sorted(found[base])
        body = [[r.display, *[r.shown(base + SKILL + s) for s in skills]] for r in rows]
        tables.append((f"{base} per skill (value ± half its 95% interval)", ["run", *skills],
                       body))
    return tables


# -- against a baseline -------------------------------------------------------------------------


def find_run(rows: list[RunRow], wanted: str) -> RunRow:
    """The row named by an MLflow run id, a Darkroom run id or a run (display) name."""
    for attribute in ("run_id", "display", "name"):
        hits = [r for r in rows if getattr(r, attribute) == wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UserError(f"--baseline `{wanted}` names {len(hits)} runs; give one of their "
                            f"names: {', '.join(r.display for r in hits)}")
    hits = [r for r in rows if r.tags.get("darkroom.run_id") == wanted]
    if len(hits) == 1:
        return hits[0]
    raise UserError(f"--baseline: no run `{wanted}` in the experiment;"
                    f"{did_you_mean(wanted, [r.display for r in rows])}")


def _run_data(row: RunRow, cache: dict[str, RunData | str]) -> RunData | str:
    if row.run_id not in cache:
        cache[row.run_id] = _read_run(row)
    return cache[row.run_id]


def _read_run(row: RunRow) -> RunData | str:
    """The run's per-image data from its output folder (a path on this machine or a URI this
    machine can read with its own credentials), or why not."""
    folder = row.tags.get("darkroom.output")
    if not folder:
        return "its MLflow run names no output folder"
    try:
        where = storage.location(folder)
        if not storage.exists(where):
            return (f"its output folder {folder} is not on this machine"
                    if storage.is_local(where) else f"its output folder {folder} is not there")
        return load_run(row.display, where)
    except (OSError, ValueError, TypeError, KeyError) as err:  # unreachable, no credentials,
        # a bad URI, a damaged or edited file
        return f"its output folder {folder} cannot be read here ({type(err).__name__}: {err})"


def against_baseline(rows: list[RunRow], base: RunRow, cache: dict[str, RunData | str]
                     ) -> tuple[list[Comparison], list[str]]:
    """Every other run against the baseline, from the runs' folders; notes on what could not
    be compared."""
    baseline = _run_data(base, cache)
    if isinstance(baseline, str):
        raise UserError(f"--baseline {base.display}: {baseline}")
    boot = baseline.spec.bootstrap
    out, notes = [], []
    for row in rows:
        if row is base:
            continue
        data = _run_data(row, cache)
        if isinstance(data, str):
            notes.append(f"{row.display}: not compared: {data}")
            continue
        metrics = [m for m in data.spec.metrics if m in baseline.spec.metrics]
        out.append(compare_runs(data, baseline, metrics, boot.resamples or 500, boot.seed,
                                boot.level))
    return out, notes


def correct(comparisons: list[Comparison], method: str, alpha: float) -> int:
    """Adjust the p-values of every row of the verdict table together (`multiplicity`), and
    let each verdict follow its adjusted p-value; the number of tests."""
    rows = [(c, k) for c in comparisons for k in c.differences]
    raw = np.array([c.differences[k].p_value for c, k in rows], dtype=np.float64)
    adjusted = adjust(raw, method)
    for (c, k), p in zip(rows, adjusted, strict=True):
        d = c.differences[k]
        c.differences[k] = replace(d, adjusted=float(p),
                                   verdict=verdict_at(d.delta, p, alpha, higher_is_better(k)))
    return int(np.isfinite(raw).sum())


def baseline_title(base: str, level: float, correction: str, tests: int) -> str:
    """The verdict table's header: the intervals, the pairing, the correction and the number of
    tests it was made over."""
    return (f"against the baseline {base} ({level:.0%} intervals; paired bootstrap over shared "
            f"prompts and seeds unless noted; {CORRECTIONS[correction].header(tests, 1 - level)};"
            " p-values from the bootstrap)")


def p_text(p: float) -> str:
    """A p-value to two significant digits (empty when there is none)."""
    return "" if not math.isfinite(p) else f"{p:.2g}"


def baseline_table(comparisons: list[Comparison], key: str) -> tuple[list[str], list[list[str]],
                                                                     list[str]]:
    """One row per run and metric (the ranking metric first): difference ± half-width, the
    interval, the raw and adjusted p-values, the verdict, paired or not; and each row's
    verdict."""
    header = ["run", "metric", "run - baseline", "95% interval", "p", "adjusted p", "verdict",
              "how"]
    body, verdicts = [], []
    for c in comparisons:
        for k in sorted(c.differences, key=lambda k: (k != key, k)):
            d = c.differences[k]
            ci = (d.interval.low, d.interval.high) if d.interval else None
            interval = ("" if ci is None else
                        f"[{ci[0]:+.{places(ci)}f}, {ci[1]:+.{places(ci)}f}]")
            # the difference to the interval's places; the interval beside it says the rest
            delta = fmt(d.delta, sign=True) if ci is None else f"{d.delta:+.{places(ci)}f}"
            body.append([c.run, k, delta, interval, p_text(d.p_value), p_text(d.adjusted),
                         d.verdict, "paired" if d.paired else "unpaired"])
            verdicts.append(d.verdict)
        for name, reason in c.missing.items():
            body.append([c.run, name, "missing", "", "", "", reason, ""])
            verdicts.append("")
    return header, body, verdicts


# -- after an evaluation -------------------------------------------------------------------------


def ui_command(uri: str) -> str:
    """How to open a tracking store in MLflow's UI (a server is its own UI)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    return f"mlflow ui --backend-store-uri {uri}"


def evaluation_report(results: list[dict], experiment: str, uri: str | None = None,
                      shown_warnings: int = 10) -> str:
    """What `darkroom run` prints after a job's evaluation: its runs ranked as `darkroom
    compare` prints them (each value ± half its 95% interval), every missing metric with its
    reason, the warnings, and how to open the runs in MLflow's UI."""
    client = tracking.client(uri)
    with tracking.bounded_requests():
        ids = {r["mlflow_run_id"] for r in results}
        rows = [r for r in load_runs(client, experiment) if r.run_id in ids]
    if not rows:
        return f"no evaluated run of experiment `{experiment}` found at {client.tracking_uri}"
    key = pick_metric(rows, None)
    names = {r.run_id: r.display for r in rows}
    lines = [f"evaluation: {len(rows)} run(s) of experiment `{experiment}`, best {key} first",
             format_table(*table_rows(rank(rows, key), key))]
    for title, header, body in skill_tables(rank(rows, key), key):
        lines += [title, format_table(header, body)]
    missing: dict[tuple[str, str], list[str]] = {}
    for result in results:
        for name, reason in result["missing"].items():
            missing.setdefault((name, reason), []).append(names.get(result["mlflow_run_id"], ""))
    for (name, reason), runs in missing.items():
        lines.append(f"missing: {name} in {len(runs)} run(s): {reason}")
    warnings = list(dict.fromkeys(w for r in results for w in r["warnings"]))
    lines += [f"warning: {w}" for w in warnings[:shown_warnings]]
    if len(warnings) > shown_warnings:
        lines.append(f"... {len(warnings) - shown_warnings} more warning(s) in the runs' "
                     "`darkroom.warnings` tags")
    lines.append(f"Open the runs in MLflow's UI:  {ui_command(client.tracking_uri)}")
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------


def parse_real(value: str, rows: list[RunRow], data: RunData) -> int:
    """COUNT from `--real-baseline` (empty: the runs' median image count); the old
    DATASET:EXTRACTOR:COUNT form is accepted when it names the runs' own reference and
    extractor."""
    if value in ("", "auto"):
        counts = [r.value("images") for r in rows if r.value("images")]
        return int(stats.median(counts)) if counts else 500
    if value.isdigit():
        return int(value)
    dataset, _, count = value.rpartition(":")
    dataset, _, extractor = dataset.rpartition(":")
    if not (dataset and extractor and count.isdigit()):
        raise UserError(f"--real-baseline takes COUNT (or DATASET:EXTRACTOR:COUNT); got {value!r}")
    used = (data.spec.reference.dataset if data.spec.reference else None,
            data.spec.feature_extractor)
    if (dataset, extractor) != used:
        raise UserError(f"--real-baseline {value}: the runs were measured against {used[0]} "
                        f"with `{used[1]}` features; the baseline uses the runs' own reference "
                        "(give just COUNT)")
    return int(count)


def compare(experiment: str, metric: str | None = None, html_path: str | Path | None = None,
            uri: str | None = None, baseline: str | None = None,
            real: str | None = None, correction: str = "bh", output: str = "table"
            ) -> tuple[str, Path | None]:
    """The ranked table (and the baseline comparison with its verdicts corrected over the whole
    table by `correction`, and real vs real) in the `output` format (`tables.FORMATS`), and the
    report's path if asked for. With --html or --baseline the report and the verdicts are also
    logged to MLflow: to the experiment's `compare` run and to the parent run of each job whose
    runs were compared."""
    if correction not in CORRECTIONS:
        raise UserError(f"--correction: unknown `{correction}` (give bh, holm or none);"
                        f"{did_you_mean(correction, list(CORRECTIONS))}")
    client = tracking.client(uri)
    rows = load_runs(client, experiment)
    if not rows:
        raise UserError(f"experiment `{experiment}` has no evaluated runs yet")
    key = pick_metric(rows, metric)
    rows = rank(rows, key)
    cache: dict[str, RunData | str] = {}
    parts, notes = [], []
    real_row = None
    if real is not None:
        data = next((d for d in (_run_data(r, cache) for r in rows) if not isinstance(d, str)),
                    None)
        if data is None:
            raise UserError("--real-baseline: no run's folder holds an eval record")
        found = real_baseline(data, parse_real(real, rows, data))
        if isinstance(found, str):
            raise UserError(found)
        real_row = found
    table = table_rows(rows, key, real_row)
    parts.append(format_table(*table))
    skills = skill_tables(rows, key)
    for title, header, body in skills:
        parts += ["", title, format_table(header, body, keep=1)]
    against, comparisons = None, []
    if baseline is not None:
        base = find_run(rows, baseline)
        comparisons, notes = against_baseline(rows, base, cache)
        level = _level(base, cache)
        tests = correct(comparisons, correction, 1 - level)
        header, body, verdicts = baseline_table(comparisons, key)
        notes += [f"{c.run}: {n}" for c in comparisons for n in c.notes]
        title = baseline_title(base.display, level, correction, tests)
        against = (title, header, body, verdicts)
        parts += ["", title, format_table(header, body, keep=2)]
    if real_row is not None:
        notes.append(f"real vs real: {real_row.count} images drawn from the runs' reference, "
                     f"measured against its other {real_row.others} with the same features: "
                     "the floor for a run of that size")
    parts += [f"note: {n}" for n in notes]
    text = "\n".join(parts)
    columns = metric_columns(rows, key)
    records = formats.baseline_records(comparisons, key, correction)
    shown = formats.render(output, text, table, against,
                           formats.run_records(rows, columns, real_row), records, notes,
                           experiment, key)
    page, path = None, None
    if html_path is not None:
        path = Path(html_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        exp = tracking.experiment_id(client, experiment)
        page = report_html(client, experiment, rows, key, table, against, real_row,
                           human.section(client, exp), skills)
        path.write_text(page)
    if page is not None or against is not None:
        formats.log_comparison(client, experiment, rows, key, text, page, records)
    return shown, path


def _level(base: RunRow, cache: dict[str, RunData | str]) -> float:
    data = cache.get(base.run_id)
    return data.spec.bootstrap.level if isinstance(data, RunData) else 0.95
