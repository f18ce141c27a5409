"""Human rankings beside the automatic metrics in `darkroom compare`.

A rating round (`darkroom arena --log`) logs each run's Bradley-Terry strength as
`human.<question>.strength` (with `_ci_low` / `_ci_high`) and its win rate on the run's own
MLflow run, so the compare table shows them as columns; and the round's own run (`darkroom.kind`
= `arena`) holds what says how far the votes can be trusted: agreement between raters, the
position-bias check and each judge's agreement with the human majority, shown in the report's
"Human preference" section.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from darkroom.evals.metrics.compute import CI_HIGH, CI_LOW

PREFIX = "human."
KIND = "arena"
STRENGTH = "strength"
SUMMARY = {"votes": "votes", "raters": "raters", "alpha": "Krippendorff's alpha",
           "left_share": "left side chosen", "position_p": "position bias p"}
AGREEMENT = "agreement."


def key(question: str, name: str) -> str:
    """The MLflow key of one of a question's numbers (a name that MLflow accepts)."""
    return f"{PREFIX}{question}.{re.sub(r'[^A-Za-z0-9_. /-]', '_', name)}"


def columns(rows: Sequence[Any]) -> list[str]:
    """The human strength keys some run of the compare table has."""
    found = {k for r in rows for k in r.metrics
             if k.startswith(PREFIX) and k.endswith("." + STRENGTH)}
    return sorted(found)


def _shown(metrics: dict[str, float], name: str, percent: bool = False) -> str:
    value = metrics.get(name)
    if value is None:
        return ""
    low, high = metrics.get(name + CI_LOW), metrics.get(name + CI_HIGH)
    form = "{:.0%}" if percent else "{:.3g}"
    text = form.format(value)
    return text if low is None or high is None else \
        f"{text} [{form.format(low)}, {form.format(high)}]"


def section(client, experiment_id: str) -> str:
    """The report's "Human preference" section from the experiment's arena runs ("" if none)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`darkroom.kind` = '{KIND}'",
                              max_results=50)
    parts = []
    esc = html.escape
    for run in runs:
        metrics = run.data.metrics
        questions = sorted({k[len(PREFIX):].split(".", 1)[0] for k in metrics
                            if k.startswith(PREFIX)})
        for question in questions:
            at = f"{PREFIX}{question}."
            text = run.data.tags.get(f"{at}text", question)
            cells = "".join(f"<tr><td>{esc(label)}</td><td>"
                            f"{esc(_shown(metrics, at + name, name == 'left_share'))}</td></tr>"
                            for name, label in SUMMARY.items() if at + name in metrics)
            judges = sorted(k[len(at + AGREEMENT):] for k in metrics
                            if k.startswith(at + AGREEMENT) and not k.endswith((CI_LOW, CI_HIGH)))
            cells += "".join(f"<tr><td>{esc(j)} agrees with the human majority</td><td>"
                             f"{esc(_shown(metrics, at + AGREEMENT + j, True))}</td></tr>"
                             for j in judges)
            parts.append(f"<h3>{esc(run.info.run_name or '')}: {esc(text)}</h3>"
                         f"<table>{cells}</table>")
    if not parts:
        return ""
    return ("<h2>Human preference</h2><p>Strengths in the table above are Bradley-Terry "
            "log-strengths from blind pairwise votes (`human.*.strength`, 95% intervals over "
            "prompts and raters).</p>" + "".join(parts))
