"""The arena's pages: the login form, the rating page (plain HTML and JavaScript, no build step)
and the read-only results page, rendered from a round's `Results`."""

from __future__ import annotations

import html
import math

from darkroom.evals.arena.rankings import QuestionResult, Results

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1120px; padding: 1em;
       color: #222; }
header { display: flex; gap: 1em; align-items: center; justify-content: space-between;
         border-bottom: 1px solid #ddd; padding-bottom: .5em; }
header form { margin: 0; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { color: #a00; font-weight: bold; }
"""

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Darkroom arena: log in</title>
<link rel="icon" href="data:,"><style>{style}</style></head><body>
<h1>Darkroom arena</h1>
<p>{message}</p>
<form method="post" action="/login">
<label>Your token <input name="token" type="password" autocomplete="current-password"
 required autofocus size="36"></label> <button type="submit">Log in</button>
</form></body></html>
"""


def login_page(message: str = "Log in with the token you were given.") -> str:
    """The login form, with a message."""
    return LOGIN.format(style=STYLE, message=html.escape(message))


RATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Darkroom arena</title>
<link rel="icon" href="data:,">
<style>{style}
#prompt {{ font-size: 1.25em; margin: .8em 0; min-height: 1.5em; }}
#pair {{ display: flex; gap: 1.5em; justify-content: center; }}
figure {{ margin: 0; text-align: center; }}
figure img {{ width: min(44vw, 52vh, 512px); height: auto; background: #eee; display: block; }}
figure img.small {{ image-rendering: pixelated; }}
.question {{ margin: 1em 0; padding: .6em; border: 1px solid #ddd; opacity: .45; }}
.question.active {{ border-color: #36c; opacity: 1; }}
.question button {{ font-size: 1em; margin-right: .4em; padding: .4em .9em; }}
kbd {{ border: 1px solid #aaa; border-radius: 3px; padding: 0 .3em; font-size: .85em; }}
#status {{ color: #555; min-height: 1.2em; }}
</style></head><body>
<header><span id="progress">loading</span><span>rating as <b>{rater}</b></span>
<form method="post" action="/logout"><button type="submit">Log out</button></form></header>
<p id="prompt"></p>
<div id="pair">
<figure><img id="left" alt="the left image"><figcaption>left</figcaption></figure>
<figure><img id="right" alt="the right image"><figcaption>right</figcaption></figure>
</div>
<div id="questions"></div>
<p id="status"></p>
<p><small>Keys: <kbd>1</kbd> or <kbd>&larr;</kbd> left, <kbd>2</kbd> or <kbd>&rarr;</kbd> right,
<kbd>3</kbd> or <kbd>&uarr;</kbd> tie, <kbd>4</kbd> or <kbd>&darr;</kbd> both bad.</small></p>
<script>
const KEYS = {{"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
  "3": "tie", "ArrowUp": "tie", "4": "both_bad", "ArrowDown": "both_bad"}};
const LABELS = [["left", "Left"], ["right", "Right"], ["tie", "Tie"], ["both_bad", "Both bad"]];
let current = null, busy = false;
const $ = (id) => document.getElementById(id);

function active() {{
  return current && !current.done ? current.questions.find((q) => !(q.id in current.answered))
    : null;
}}

function render() {{
  const p = current.progress;
  $("progress").textContent = `${{p.votes}} votes cast · ${{p.left}} of ${{p.total}} pairs left`;
  if (current.done) {{
    $("prompt").textContent = "Every pair has been rated. Thank you!";
    $("pair").hidden = true; $("questions").replaceChildren(); return;
  }}
  $("prompt").textContent = current.prompt;
  const now = active();
  $("questions").replaceChildren(...current.questions.map((q) => {{
    const box = document.createElement("div");
    box.className = "question" + (q === now ? " active" : "");
    box.dataset.question = q.id;
    const text = document.createElement("p");
    text.textContent = q.text + (q.id in current.answered ? " (answered)" : "");
    box.append(text);
    for (const [answer, label] of LABELS) {{
      const button = document.createElement("button");
      button.textContent = label; button.dataset.answer = answer;
      button.disabled = q !== now;
      button.addEventListener("click", () => answer_(answer));
      box.append(button);
    }}
    return box;
  }}));
}}

function show(img, url) {{
  img.classList.remove("small");
  img.onload = () => img.classList.toggle("small", img.naturalWidth < 256);
  img.src = url;
}}

async function load() {{
  const r = await fetch("/api/next", {{credentials: "same-origin"}});
  if (r.status === 401) {{ location.reload(); return; }}
  current = await r.json();
  if (!current.done) {{
    show($("left"), current.images.left); show($("right"), current.images.right);
  }}
  render();
}}

async function answer_(answer) {{
  const q = active();
  if (busy || !q) return;
  busy = true;
  $("status").textContent = "saving";
  try {{
    const r = await fetch("/api/vote", {{method: "POST", credentials: "same-origin",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{ticket: current.ticket, question: q.id, answer: answer}})}});
    if (!r.ok) {{
      const body = await r.json().catch(() => ({{}}));
      $("status").textContent = `not saved: ${{body.detail || r.status}}`; return;
    }}
    current.answered[q.id] = answer;
    current.progress.votes += 1;
    $("status").textContent = "saved";
    if (active()) render(); else await load();
  }} catch (err) {{
    $("status").textContent = "not saved (no connection): answer again";
  }} finally {{ busy = false; }}
}}

document.addEventListener("keydown", (event) => {{
  const answer = KEYS[event.key];
  if (answer && !event.ctrlKey && !event.metaKey && !event.altKey) {{
    event.preventDefault(); answer_(answer);
  }}
}});
load();
</script></body></html>
"""


def rating_page(rater: str) -> str:
    """The page a rater votes on (it asks the API for each pair)."""
    return RATE.format(style=STYLE, rater=html.escape(rater))


# -- the results page ----------------------------------------------------------------------------


def _num(value: float | None, places: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{places}f}"


def _interval(low: float | None, high: float | None, places: int = 2) -> str:
    return "" if low is None or high is None else f"[{low:.{places}f}, {high:.{places}f}]"


def _forest(result: QuestionResult) -> str:
    """An SVG of the strengths with their intervals, best at the top."""
    rows = result.strengths
    lows = [s.low for s in rows] + [0.0]
    highs = [s.high for s in rows] + [0.0]
    lo, hi = min(lows), max(highs)
    span = (hi - lo) or 1.0
    width, left, row = 640, 260, 26

    def x(value: float) -> float:
        return left + (value - lo) / span * (width - left - 20)

    parts = [f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{row * len(rows) + 4}" '
             'stroke="#bbb" stroke-dasharray="3 3"/>']
    for i, s in enumerate(rows):
        y = row * i + row / 2 + 4
        parts.append(f'<text x="{left - 10}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="13">{html.escape(s.name)}</text>')
        parts.append(f'<line x1="{x(s.low):.1f}" y1="{y:.1f}" x2="{x(s.high):.1f}" '
                     f'y2="{y:.1f}" stroke="#36c" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(s.strength):.1f}" cy="{y:.1f}" r="4.5" fill="#36c"/>')
    height = row * len(rows) + 10
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="strengths with 95% intervals">{"".join(parts)}</svg>')


def _question(result: QuestionResult, results: Results) -> str:
    esc = html.escape
    out = [f"<h2>{esc(result.text)} <small>({esc(result.question)})</small></h2>",
           f"<p>{result.votes} votes from {result.raters} raters on {result.prompts} prompts."]
    if not result.votes:
        return "".join(out) + " No votes yet.</p>"
    out.append(" Strengths are Bradley-Terry log-strengths (0: the average run) with 95% "
               "intervals over prompts and raters; ties and \"both bad\" count as no "
               "preference.</p>")
    out.append(_forest(result))
    cells = "".join(
        f"<tr><td class=num>{rank}</td><td>{esc(s.name)}</td><td class=num>{_num(s.strength)}"
        f"</td><td class=num>{_interval(s.low, s.high)}</td><td class=num>{s.wins}</td>"
        f"<td class=num>{s.ties}</td><td class=num>{s.losses}</td><td class=num>{s.both_bad}"
        f"</td></tr>" for rank, s in enumerate(result.strengths, 1))
    out.append("<table class=ranking><tr><th>#</th><th>run</th><th>strength</th>"
               "<th>95% interval</th><th>wins</th><th>ties</th><th>losses</th><th>both bad</th>"
               f"</tr>{cells}</table>")
    order = [s.run for s in result.strengths]
    index = {r: i for i, r in enumerate(results.runs)}
    head = "".join(f"<th>{esc(results.names.get(r, r))}</th>" for r in order)
    body = []
    for a in order:
        row = []
        for b in order:
            rate = result.win_rate[index[a], index[b]]
            seen = result.compared[index[a], index[b]]
            row.append("<td></td>" if a == b or not seen else
                       f"<td class=num>{rate:.0%} <small>of {int(seen)}</small></td>")
        body.append(f"<tr><th>{esc(results.names.get(a, a))}</th>{''.join(row)}</tr>")
    out.append("<h3>Win rates (row against column; a tie counts a half)</h3>"
               f"<table class=winrates><tr><th></th>{head}</tr>{''.join(body)}</table>")
    out.append("<h3>Can the votes be trusted?</h3><ul>")
    alpha = result.alpha
    if alpha is not None and alpha.units and math.isnan(alpha.value):
        out.append("<li>Agreement between raters (Krippendorff's alpha): undefined, every "
                   "answer was the same.</li>")
    elif alpha is not None and alpha.units:
        ci = alpha.interval
        out.append(f"<li>Agreement between raters (Krippendorff's alpha, nominal): "
                   f"{_num(alpha.value)} {_interval(ci and ci.low, ci and ci.high)} on "
                   f"{alpha.units} pairs rated by two or more raters.</li>")
    else:
        out.append("<li>Agreement between raters: no pair has been rated by two raters "
                   "yet.</li>")
    pos = result.position
    if pos is not None and pos.decided:
        flag = ('<span class=flag>position bias: raters favour the '
                f'{"left" if pos.share > 0.5 else "right"} side</span>') if pos.flagged \
            else "no position bias detected"
        low, high = pos.interval or (None, None)
        out.append(f"<li>Left side chosen in {pos.share:.1%} {_pct_interval(low, high)} of "
                   f"{pos.decided} decided votes (p = {pos.p_value:.3g} against 50%): "
                   f"{flag}.</li>")
    if result.order_effect is not None:
        g, low, high = result.order_effect
        out.append(f"<li>Order effect in the model (γ, 1 = none): {_num(g)} "
                   f"{_interval(low, high)}; tie parameter ν = {_num(result.tie)}.</li>")
    out.append("</ul>")
    judged = [j for j in result.judges if j.agreement.units]
    if judged:
        rows = "".join(
            f"<tr><td>{esc(j.name)}</td><td>{esc(j.kind)}</td>"
            f"<td class=num>{_pct(j.agreement.value)}</td><td class=num>"
            f"{_pct_interval(*_bounds(j.agreement.interval))}</td>"
            f"<td class=num>{j.agreement.units}</td></tr>" for j in judged)
        out.append("<h3>Judges against the human majority</h3><table class=judges><tr>"
                   "<th>judge</th><th>kind</th><th>agreement</th><th>95% interval</th>"
                   f"<th>pairs</th></tr>{rows}</table>")
    return "".join(out)


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.0%}"


def _bounds(ci) -> tuple[float | None, float | None]:
    return (None, None) if ci is None else (ci.low, ci.high)


def _pct_interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:.0%}, {high:.0%}]"


def results_page(results: Results) -> str:
    """The read-only results page of a round."""
    esc = html.escape
    raters = ", ".join(f"{esc(r)} ({n})" for r, n in sorted(results.per_rater.items()))
    body = "".join(_question(q, results) for q in results.questions)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Darkroom arena: {esc(results.round)}</title>
<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>
<header><h1>Darkroom arena: {esc(results.round)}</h1>
<form method="post" action="/logout"><button type="submit">Log out</button></form></header>
<p>{len(results.runs)} runs. Votes by rater: {raters or "none yet"}.</p>
{body}
</body></html>
"""


def results_text(results: Results) -> str:
    """The results as plain text (`darkroom arena --results`)."""
    lines = [f"round {results.round}: {len(results.runs)} runs"]
    for q in results.questions:
        lines += ["", f"{q.text} ({q.question}): {q.votes} votes, {q.raters} raters, "
                      f"{q.prompts} prompts"]
        if not q.votes:
            continue
        width = max(len(s.name) for s in q.strengths)
        lines.append(f"  {'#':>2}  {'run':<{width}}  strength [95% interval]   "
                     "W / T / L / both bad")
        for rank, s in enumerate(q.strengths, 1):
            lines.append(f"  {rank:>2}  {s.name:<{width}}  {s.strength:+.2f} "
                         f"[{s.low:+.2f}, {s.high:+.2f}]   {s.wins} / {s.ties} / {s.losses} / "
                         f"{s.both_bad}")
        if q.alpha is not None and q.alpha.units:
            ci = q.alpha.interval
            lines.append(f"  raters agree: Krippendorff's alpha {q.alpha.value:.2f} "
                         f"{_interval(ci and ci.low, ci and ci.high)} on {q.alpha.units} pairs")
        if q.position is not None and q.position.decided:
            pos = q.position
            low, high = pos.interval or (None, None)
            verdict = "POSITION BIAS" if pos.flagged else "no position bias detected"
            lines.append(f"  left side chosen {pos.share:.1%} {_pct_interval(low, high)} of "
                         f"{pos.decided} (p = {pos.p_value:.3g}): {verdict}")
        for j in (j for j in q.judges if j.agreement.units):
            lines.append(f"  judge {j.name} ({j.kind}): agrees with the human majority "
                         f"{_pct(j.agreement.value)} "
                         f"{_pct_interval(*_bounds(j.agreement.interval))} "
                         f"on {j.agreement.units} pairs")
    return "\n".join(lines)
