"""`darkroom arena`: a rating round over a job's runs. Importing this module is cheap (no web
framework, no database library, no torch); the command loads them when it runs."""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from pathlib import Path
from typing import Any

from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError

DEFAULT_STORE = "arena/votes.sqlite"  # inside the job folder
OWNER = "owner"


def register(subparsers) -> None:
    """Add `arena` to the `darkroom` command."""
    p = subparsers.add_parser(
        "arena", help="rate a job's runs blind, in pairs, in the browser: rankings with "
        "intervals",
        description="Serve a small web app where raters compare two images of the same prompt "
        "and seed from two runs of one job (blind, sides at random), and rank the runs from "
        "their votes (Bradley-Terry strengths with intervals over prompts and raters). "
        "--export, --results and --log work on the stored votes and exit.",
    )
    p.add_argument("paths", nargs="+", metavar="JOB_OR_RUNS",
                   help="a job folder (OUTPUT/<job>), or two or more run folders of one job")
    p.add_argument("--runs", help="comma-separated run ids of the job (default: all)")
    p.add_argument("--raters", help="comma-separated names to add as raters (each gets a "
                   "login link; names already in the round keep theirs)")
    p.add_argument("--viewers", help="comma-separated names who may read the results page "
                   f"(default: one viewer named `{OWNER}`)")
    p.add_argument("--question", action="append", metavar="ID=TEXT",
                   help="a question raters answer about each pair (repeat for a second set, "
                   "e.g. --question prompt='Which follows the prompt better?' "
                   "--question looks='Which looks better?'; default: overall='Which image is "
                   "better?')")
    p.add_argument("--round", help="the round's name in the store (default: the job's name)")
    p.add_argument("--store", help="SQLAlchemy URL of the vote store (default: "
                   f"sqlite:///<job>/{DEFAULT_STORE}; e.g. postgresql+psycopg://host/db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    p.add_argument("--repeats", action="store_true",
                   help="show raters pairs again once they have seen every pair")
    p.add_argument("--judgements", help="pairwise judges' verdicts (Parquet file or folder; "
                   "default: <job>/judgements/)")
    p.add_argument("--export", metavar="FILE.parquet", help="write the round's votes as "
                   "Parquet and exit")
    p.add_argument("--results", action="store_true", help="print the rankings and exit")
    p.add_argument("--json", action="store_true", help="with --results: as JSON")
    p.add_argument("--log", action="store_true", help="log the rankings to MLflow (on the "
                   "job's runs, beside the automatic metrics) and exit")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the job's, else "
                   "MLflow's)")
    p.add_argument("--experiment", help="MLflow experiment (default: the job's)")
    p.add_argument("--resamples", type=int, default=300,
                   help="bootstrap resamples per factor for the intervals (default 300)")
    p.set_defaults(handler=run_arena)


def _names(value: str | None, flag: str) -> list[str]:
    import re

    from darkroom.evals.arena.spec import NAME

    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    for name in names:
        if not re.match(NAME, name):
            raise UserError(f"{flag}: `{name}` is not a usable name (letters, digits, `_`, "
                            "`.`, `-`; at most 64, starting with a letter or digit)")
    return names


def questions_of(values: list[str] | None) -> list[dict[str, str]] | None:
    """`--question ID=TEXT` flags as question dicts (None: the default question)."""
    if not values:
        return None
    out = []
    for value in values:
        qid, sep, text = value.partition("=")
        if not sep or not text.strip():
            raise UserError(f"--question takes ID=TEXT (e.g. looks='Which looks better?'), "
                            f"got {value!r}")
        out.append({"id": qid.strip(), "text": text.strip()})
    return out


def job_and_runs(paths: list[str], runs: str | None) -> tuple[Location, list[str] | None]:
    """The job folder and the run ids the command was given (None: all)."""
    places = []
    for value in paths:
        problem = storage.check(value)
        if problem:
            raise UserError(f"JOB_OR_RUNS: {problem}")
        place = storage.location(value)
        if not storage.exists(place) or storage.is_file(place):
            raise UserError(f"JOB_OR_RUNS: `{value}` is not a folder")
        places.append(place)
    wanted = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    if len(places) == 1 and not storage.is_file(places[0] / layout.RUN_INFO):
        return places[0], wanted
    if not all(storage.is_file(p / layout.RUN_INFO) for p in places):
        raise UserError("JOB_OR_RUNS: give one job folder, or two or more run folders "
                        "(folders with a run.json) of one job")
    parents = {p.parent for p in places}
    if len(parents) > 1:
        raise UserError("JOB_OR_RUNS: the run folders are in different job folders; a round "
                        "compares runs of one job (they share prompts and seeds)")
    if wanted:
        raise UserError("--runs: give run ids with a job folder, not with run folders")
    return parents.pop(), [p.name for p in places]


def store_url(value: str | None, job_dir: Location) -> str:
    """The vote store's URL: the one given, or a SQLite file in a local job folder."""
    if value:
        return value
    if not storage.is_local(job_dir):
        raise UserError(f"--store: {job_dir} is not a local folder, so the votes cannot live "
                        "beside it; give --store (sqlite:///votes.sqlite, postgresql+psycopg://"
                        "...)")
    path = Path(job_dir).resolve() / DEFAULT_STORE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_store(url: str):
    """The vote store at `url`; bad URLs, missing drivers and unreachable servers are
    UserErrors that say what to fix."""
    import sqlalchemy as sa

    from darkroom.evals.arena.store import VoteStore

    try:
        return VoteStore(url)
    except sa.exc.ArgumentError as err:
        raise UserError(f"--store: `{url}` is not a SQLAlchemy URL ({err}); e.g. "
                        "sqlite:///votes.sqlite or postgresql+psycopg://user@host/db") from err
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as err:
        raise UserError(f"--store: the database driver for `{_shown(url)}` is not installed "
                        f"({err}); install it (PostgreSQL: pip install 'psycopg[binary]')") \
            from err
    except sa.exc.OperationalError as err:
        first = str(err.orig).strip().splitlines()[0][:200] if err.orig else str(err)[:200]
        raise UserError(f"--store: cannot open the vote store {_shown(url)} ({first})") from err


def _shown(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def build_round(args: argparse.Namespace, job: dict[str, Any], job_dir: Location,
                run_ids: list[str] | None):
    """The round the flags describe, with its store opened and its people added."""
    from darkroom.evals.arena.rounds import Round
    from darkroom.evals.arena.source import Runs
    from darkroom.evals.arena.spec import ArenaSpec
    from darkroom.platform.config import validate

    raters, viewers = _names(args.raters, "--raters"), _names(args.viewers, "--viewers")
    settings = {"round": args.round or job.get("name") or job_dir.name,
                "questions": questions_of(args.question), "repeats": args.repeats,
                "host": args.host, "port": args.port}
    spec = validate(ArenaSpec, {k: v for k, v in settings.items() if v is not None},
                    "arena settings (flags)")
    if args.resamples < 10:
        raise UserError(f"--resamples must be at least 10, got {args.resamples}")
    runs = Runs(job_dir, run_ids)
    store = open_store(store_url(args.store, job_dir))
    people = store.raters(spec.round)
    clash = [n for n in raters if people.get(n) == "viewer"] + [
        n for n in viewers if people.get(n) == "rater"] + sorted(set(raters) & set(viewers))
    if clash:
        raise UserError(f"`{clash[0]}` cannot be both a rater and a viewer; pick another name")
    store.add_raters(spec.round, raters, "rater")
    if not viewers and "viewer" not in people.values():
        viewers = [OWNER if OWNER not in {*raters, *people} else f"{OWNER}-viewer"]
    store.add_raters(spec.round, viewers, "viewer")
    judgements = storage.location(args.judgements) if args.judgements else None
    return Round(runs, store, spec, judgements, resamples=args.resamples)


def run_arena(args: argparse.Namespace) -> int:
    """`darkroom arena`: serve a rating round, or export, print or log its results."""
    from darkroom.evals.outputs import read_job_file

    job_dir, run_ids = job_and_runs(args.paths, args.runs)
    job = read_job_file(job_dir)
    arena = build_round(args, job, job_dir, run_ids)
    try:
        if args.export or args.results or args.log:
            return _offline(args, arena, job)
        if "rater" not in arena.store.raters(arena.name).values():
            raise UserError("the round has no raters yet: add some with --raters alice,bob")
        serve(arena)
        return 0
    finally:
        arena.store.close()


def _offline(args: argparse.Namespace, arena, job: dict[str, Any]) -> int:
    if args.export:
        import pyarrow.parquet as pq

        from darkroom.evals.arena.store import to_arrow

        table = to_arrow(arena.store.votes(arena.name))
        target = Path(args.export)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        print(f"wrote {len(table)} votes of round {arena.name} to {target}")
    if args.results:
        from darkroom.evals.arena.pages import results_text
        from darkroom.evals.arena.rankings import as_dict

        results = arena.results()
        print(json.dumps(as_dict(results), indent=2) if args.json else results_text(results))
    if args.log:
        from darkroom.evals.arena.tracking import log_round

        tracking = job.get("tracking") or {}
        uri = args.tracking_uri or tracking.get("uri")
        experiment = args.experiment or tracking.get("experiment") or job.get("name") \
            or arena.runs.job_dir.name
        run = log_round(arena.results(), arena.runs, uri, experiment)
        print(f"logged round {arena.name} to MLflow experiment {experiment} (run {run})")
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a port in use or a host that is not this machine's is
    a UserError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        why = err.strerror or str(err)
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"--port: port {port} on {host} is in use ({why}); give another "
                            "with --port (0: any free one)") from err
        raise UserError(f"--host: cannot listen on {host} port {port} ({why}); give an "
                        "address of this machine (127.0.0.1, 0.0.0.0)") from err
    sock.listen(128)
    return sock


def serve(arena) -> None:
    """Serve the round until interrupted, after printing everyone's login link."""
    import uvicorn

    from darkroom.evals.arena.app import build_app

    spec = arena.spec
    sock = listen(spec.host, spec.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    print(f"arena: round {arena.name}: {len(arena.runs.ids)} runs, "
          f"{arena.runs.total_pairs()} pairs, questions: "
          f"{', '.join(q.id for q in spec.questions)}; store {_shown(arena.store.url)}")
    for name, (role, token) in sorted(arena.tokens().items()):
        print(f"  {role} {name}: {base}/login?token={token}")
    if spec.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {spec.host}: anyone who can reach it sees the login page, "
              "and tokens cross the network in clear text unless a TLS proxy is in front",
              file=sys.stderr)
    print(f"serving at {base}/ (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(build_app(arena), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
