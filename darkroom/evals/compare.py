"""Compare the runs of an experiment: a table on the terminal and a static HTML report (contact
sheets side by side, quality vs speed with its Pareto front, metric vs steps per sampler), which
is also logged to MLflow in the experiment's `compare` run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from darkroom.evals import tracking
from darkroom.evals.metrics import HIGHER_IS_BETTER, METRICS
from darkroom.platform.errors import UserError, did_you_mean

SPEED = "images_per_s"
QUALITY = [m.key for m in METRICS.values() if "*" not in m.key]


@dataclass
class RunRow:
    """One evaluated run of an experiment: its params, metrics and why any metric is missing."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    missing: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        """The run's value of a metric, or None when it has none or it is NaN."""
        value = self.metrics.get(key)
        return None if value is None or math.isnan(value) else value


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
                           dict(run.data.params), dict(run.data.metrics), missing))
    return sorted(rows, key=lambda r: r.name)


def pick_metric(rows: list[RunRow], metric: str | None) -> str:
    """The metric key to rank by: the one asked for (a metric name or a raw key some run
    has), else the first quality metric any run has, else images/s."""
    present = sorted({k for r in rows for k in r.metrics if r.value(k) is not None})
    if metric is None:
        for key in QUALITY:
            if key in present:
                return key
        return SPEED
    key = METRICS[metric].key if metric in METRICS else metric
    if key not in present:
        raise UserError(f"no run has metric `{metric}`;{did_you_mean(key, present)}")
    return key


def rank(rows: list[RunRow], key: str) -> list[RunRow]:
    """Best first under the metric's direction; runs without it last."""
    sign = -1.0 if HIGHER_IS_BETTER.get(key, True) else 1.0
    return sorted(rows, key=lambda r: (r.value(key) is None, sign * (r.value(key) or 0.0)))


def table_rows(rows: list[RunRow], key: str) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells: run params, the ranking metric, images/s, then the
    other quality metrics some run has; absent values read `missing`."""
    extra = [k for k in QUALITY if k != key and any(r.value(k) is not None for r in rows)]
    header = ["run", "model", "sampler", "steps", "guidance", "images", key, SPEED, *extra]
    body = []
    for r in rows:
        p = r.params
        cells = [r.name, p.get("model", ""), p.get("sampler", ""), p.get("steps", ""),
                 p.get("guidance_scale", ""), _fmt(r.value("images"), 0)]
        cells += [_fmt(r.value(k)) for k in (key, SPEED, *extra)]
        body.append(cells)
    return header, body


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "missing"
    return f"{value:.{digits}f}" if digits else str(int(value))


def format_table(header: list[str], body: list[list[str]]) -> str:
    """The table as plain text: columns padded to width, a dashed rule under the header."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
             for row in [header, ["-" * w for w in widths], *body]]
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both speed (x, higher) and quality (y)."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            x2 >= x and sign * y2 >= sign * y and (x2 > x or sign * y2 > sign * y)
            for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def scatter_svg(rows: list[RunRow], key: str) -> str:
    """Inline SVG of the metric against images/s, runs labelled, Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in rows if r.value(key) is not None and r.value(SPEED) is not None]
    figure, axes = plt.subplots(figsize=(6, 4))
    points = [(r.value(SPEED), r.value(key)) for r in usable]
    if points:
        axes.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        for r, (x, y) in zip(usable, points, strict=True):
            axes.annotate(r.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points, HIGHER_IS_BETTER.get(key, True))
        axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "--",
                  color="tab:red", label="Pareto front")
        axes.legend()
    better = "higher" if HIGHER_IS_BETTER.get(key, True) else "lower"
    axes.set(xlabel="images/s (higher is faster)", ylabel=f"{key} ({better} is better)",
             title=f"{key} vs speed")
    return _svg(figure)


def steps_svg(rows: list[RunRow], key: str) -> str:
    """Inline SVG of the metric against steps, one line per model and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        steps = r.params.get("steps")
        if r.value(key) is not None and steps not in (None, "None"):
            label = f"{r.params.get('model', '')} {r.params.get('sampler', '')}".strip()
            lines.setdefault(label, []).append((float(steps), r.value(key)))
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    if lines:
        axes.legend(fontsize=7)
    axes.set(xlabel="steps", ylabel=key, title=f"{key} vs steps, per sampler")
    return _svg(figure)


def contact_sheet_uri(client, run_id: str) -> str | None:
    """The run's contact sheet as a data: URI (the report is one self-contained file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, "contact_sheet.png", folder)
        except Exception:  # no sheet logged for this run: the report says so
            return None
        data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def report_html(client, experiment: str, rows: list[RunRow], key: str) -> str:
    """The self-contained HTML report: the table, contact sheets and both plots."""
    header, body = table_rows(rows, key)
    esc = html.escape
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in body
    ) + "</table>"
    sheets = []
    for r in rows:
        uri = contact_sheet_uri(client, r.run_id)
        image = (f'<img src="{uri}" alt="contact sheet of {esc(r.name)}">' if uri
                 else "<p>(no contact sheet logged)</p>")
        sheets.append(f"<figure>{image}<figcaption>{esc(r.name)}<br>{esc(key)}: "
                      f"{_fmt(r.value(key))}</figcaption></figure>")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Darkroom compare: {esc(experiment)}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
.sheets {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figure img {{ max-width: 520px; image-rendering: pixelated; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; }} .plots svg {{ max-width: 600px; }}
</style></head><body>
<h1>{esc(experiment)}: {esc(key)}</h1>
<p>{len(rows)} runs, ranked by {esc(key)} ({'higher' if HIGHER_IS_BETTER.get(key, True)
else 'lower'} is better). Made {when}.</p>
{table}
<h2>Contact sheets</h2><div class="sheets">{''.join(sheets)}</div>
<h2>Quality and speed</h2><div class="plots">{scatter_svg(rows, key)}{steps_svg(rows, key)}</div>
</body></html>
"""


def compare(experiment: str, metric: str | None = None, html_path: str | Path | None = None,
            uri: str | None = None) -> tuple[str, Path | None]:
    """The ranked table as text, and the report's path (also logged to MLflow) if asked for."""
    client = tracking.client(uri)
    rows = load_runs(client, experiment)
    if not rows:
        raise UserError(f"experiment `{experiment}` has no evaluated runs yet")
    key = pick_metric(rows, metric)
    rows = rank(rows, key)
    text = format_table(*table_rows(rows, key))
    if html_path is None:
        return text, None
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = report_html(client, experiment, rows, key)
    path.write_text(page)
    exp = tracking.experiment_id(client, experiment)
    with tracking.run_scope(client, exp, tracking.path_key("compare", experiment), "compare",
                            {tracking.KIND: "compare", "darkroom.compare.metric": key}) as run:
        tracking.log_files(client, run, {"report.html": page, "table.txt": text + "\n"})
    return text, path

