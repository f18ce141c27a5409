"""The HTML report of `darkroom compare --html`: one self-contained page with the runs' table
(values with their intervals), the differences to a baseline run with verdicts, the contact
sheets side by side, quality against speed (with intervals and the Pareto front) and quality
against steps per model and sampler, with what real images score against the same reference
drawn across both plots.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from pathlib import Path
from typing import Any

from darkroom.evals.metrics.bootstrap import BETTER, WORSE
from darkroom.evals.metrics.compute import higher_is_better

SPEED = "images_per_s"


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
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def _errors(rows: list[Any], key: str) -> list[list[float]]:
    """Asymmetric error bars (below, above) from each run's interval, 0 where it has none."""
    low, high = [], []
    for r in rows:
        ci = r.interval(key)
        low.append(r.value(key) - ci[0] if ci else 0.0)
        high.append(ci[1] - r.value(key) if ci else 0.0)
    return [low, high]


def _real_line(axes, real: Any, key: str) -> None:
    if real is None or key not in real.metrics:
        return
    axes.axhline(real.metrics[key], color="tab:green", linestyle=":",
                 label=f"real vs real ({real.count} images)")
    low, high = real.metrics.get(f"{key}_ci_low"), real.metrics.get(f"{key}_ci_high")
    if low is not None and high is not None:
        axes.axhspan(low, high, color="tab:green", alpha=0.12)


def scatter_svg(rows: list[Any], key: str, real: Any = None) -> str:
    """The metric against images/s with intervals, runs labelled, Pareto front dashed."""
    usable = [r for r in rows if r.value(key) is not None and r.value(SPEED) is not None]
    figure, axes = _axes()
    points = [(r.value(SPEED), r.value(key)) for r in usable]
    if points:
        axes.errorbar([p[0] for p in points], [p[1] for p in points],
                      yerr=_errors(usable, key), fmt="o", color="tab:blue", capsize=3)
        for r, (x, y) in zip(usable, points, strict=True):
            axes.annotate(r.display, (x, y), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        front = pareto_front(points, higher_is_better(key))
        axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "--",
                  color="tab:red", label="Pareto front")
    _real_line(axes, real, key)
    if points or real is not None:
        axes.legend(fontsize=7)
    better = "higher" if higher_is_better(key) else "lower"
    axes.set(xlabel="images/s (higher is faster)", ylabel=f"{key} ({better} is better)",
             title=f"{key} vs speed (bars: 95% intervals)")
    return _svg(figure)


def steps_svg(rows: list[Any], key: str, real: Any = None) -> str:
    """The metric against steps with intervals, one line per setting other than steps (model,
    sampler, guidance, and whatever else tells the runs apart)."""
    lines: dict[str, list[Any]] = {}
    for r in rows:
        steps = r.params.get("steps")
        if r.value(key) is not None and steps not in (None, "None"):
            label = re.sub(rf"-s{re.escape(str(steps))}(?=-|$)", "", r.display, count=1)
            lines.setdefault(label, []).append(r)
    figure, axes = _axes()
    for label, members in sorted(lines.items()):
        members.sort(key=lambda r: float(r.params["steps"]))
        axes.errorbar([float(r.params["steps"]) for r in members],
                      [r.value(key) for r in members], yerr=_errors(members, key), fmt="o-",
                      capsize=3, label=label)
    _real_line(axes, real, key)
    if lines or real is not None:
        axes.legend(fontsize=7)
    axes.set(xlabel="steps", ylabel=key, title=f"{key} vs steps (bars: 95% intervals)")
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


def _table(header: list[str], body: list[list[str]], classes: list[str] | None = None) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr class=\"{esc(classes[i]) if classes else ''}\">"
        + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
        for i, row in enumerate(body))
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" + rows
            + "</table>")


def report_html(client, experiment: str, rows: list[Any], key: str,
                table: tuple[list[str], list[list[str]]],
                baseline: tuple[str, list[str], list[list[str]], list[str]] | None = None,
                real: Any = None, humans: str = "",
                skills: list[tuple[str, list[str], list[list[str]]]] | None = None) -> str:
    """The self-contained page. `table`: the runs' header and cells; `baseline`: (title,
    header, cells, each row's verdict); `real`: the real-vs-real baseline or None; `humans`:
    the human-preference section (`human.section`); `skills`: per-skill tables (title,
    header, cells)."""
    esc = html.escape
    per_skill = "".join(f"<h2>{esc(title)}</h2>{_table(header, body)}"
                        for title, header, body in skills or ())
    sheets = []
    for r in rows:
        uri = contact_sheet_uri(client, r.run_id)
        image = (f'<img src="{uri}" alt="contact sheet of {esc(r.display)}">' if uri
                 else "<p>(no contact sheet logged)</p>")
        sheets.append(f"<figure>{image}<figcaption>{esc(r.display)}<br>{esc(key)}: "
                      f"{esc(r.shown(key))}</figcaption></figure>")
    against = ""
    if baseline is not None:
        title, header, body, verdicts = baseline
        classes = ["better" if v == BETTER else "worse" if v == WORSE else "same"
                   for v in verdicts]
        against = f"<h2>{esc(title)}</h2>{_table(header, body, classes)}"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    direction = "higher" if higher_is_better(key) else "lower"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Darkroom compare: {esc(experiment)}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
tr.better td {{ background: #e3f4e1; }} tr.worse td {{ background: #f9e1e1; }}
tr.real td {{ font-style: italic; background: #eef6ee; }}
.sheets {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figure img {{ width: 768px; max-width: 100%; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; }} .plots svg {{ max-width: 600px; }}
</style></head><body>
<h1>{esc(experiment)}: {esc(key)}</h1>
<p>{len(rows)} runs, ranked by {esc(key)} ({direction} is better). Values are shown as value ±
half the width of their 95% bootstrap interval (images resampled by prompt). Made {when}.</p>
{_table(*table, ["real" if c[0].startswith("real vs real") else "" for c in table[1]])}
{per_skill}
{against}
{humans}
<h2>Contact sheets</h2><div class="sheets">{''.join(sheets)}</div>
<h2>Quality and speed</h2>
<div class="plots">{scatter_svg(rows, key, real)}{steps_svg(rows, key, real)}</div>
</body></html>
"""
