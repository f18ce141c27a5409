"""Tables as people read them: values with ± half their interval, plain text that fits a
terminal (columns wrapped into blocks that repeat the run's name), Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "markdown", "csv", "json")
WIDTH = 120  # a terminal's columns the plain table fits
GAP = "  "


def places(ci: tuple[float, float], digits: int = 4) -> int:
    """Decimal places that show two significant digits of an interval's half-width."""
    half = (ci[1] - ci[0]) / 2
    return min(6, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else digits


def fmt(value: float | None, ci: tuple[float, float] | None = None, digits: int = 4,
        sign: bool = False) -> str:
    """A value with ± half its interval, to two significant digits of the half-width."""
    if value is None:
        return "missing"
    plus = "+" if sign else ""
    if ci is None:
        return f"{value:{plus}.{digits}f}" if digits else str(int(value))
    shown = places(ci, digits)
    return f"{value:{plus}.{shown}f} ± {(ci[1] - ci[0]) / 2:.{shown}f}"


def _block(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
    return [GAP.join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, ["-" * w for w in widths], *body]]


def format_table(header: Sequence[str], body: Sequence[Sequence[Any]],
                 width: int | None = WIDTH, keep: int = 1) -> str:
    """The table as plain text: columns padded, a dashed rule under the header. Wider than
    `width`, it is wrapped: blocks of the columns that fit, each starting with the first
    `keep` columns (the run's name), one under the other; None: never wrapped."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
    if width is None or sum(widths) + len(GAP) * (len(widths) - 1) <= width:
        return "\n".join(_block(header, body))
    blocks: list[list[int]] = []
    current: list[int] = []
    for i in range(keep, len(header)):
        used = sum(widths[j] + len(GAP) for j in [*range(keep), *current, i]) - len(GAP)
        if current and used > width:
            blocks.append(current)
            current = []
        current.append(i)
    blocks.append(current)
    parts = []
    for columns in blocks:
        picked = [*range(keep), *columns]
        parts.append("\n".join(_block([header[j] for j in picked],
                                      [[row[j] for j in picked] for row in body])))
    return "\n\n".join(parts)


def markdown(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A Markdown (GitHub) table; `|` in cells escaped."""
    def row(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(header), "|" + "|".join("---" for _ in header) + "|",
                      *(row(r) for r in body)])


def as_csv(records: Sequence[dict[str, Any]]) -> str:
    """Records as CSV, the union of their keys as columns in first-seen order."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().rstrip("\n")


def as_json(value: Any) -> str:
    """Indented JSON; NaN and infinities as null (JSON has neither)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and (v != v or abs(v) == float("inf")):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, default=str)
