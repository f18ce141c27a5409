"""The vote store on a real PostgreSQL server (Debian's `postgresql`, started for this module
on 127.0.0.1): concurrent raters, retried and changed votes, a second store reading the same
round. Skipped where PostgreSQL or the psycopg driver is not installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from darkroom.evals.arena.app import build_app
from darkroom.evals.arena.rounds import Round
from darkroom.evals.arena.source import Runs
from darkroom.evals.arena.spec import ArenaSpec
from darkroom.evals.arena.store import Conflict, VoteStore
from tests.evals.arena.raters import check_once, vote_concurrently

BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN is None or shutil.which("runuser") is None and os.geteuid() == 0,
                       reason="PostgreSQL is not installed (apt-get install postgresql)"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg") is None,
                       reason="the psycopg driver is not installed (pip install "
                       "'psycopg[binary]')"),
]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own, in a temporary folder, on a free port."""
    root = Path(tempfile.mkdtemp(prefix="darkroom-pg-", dir="/tmp"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_owner, BIN / "initdb", "-D", data, "-A", "trust", "-U", "arena"],
                   check=True, capture_output=True)
    subprocess.run([*as_owner, BIN / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                    f"-p {port} -k {root} -h 127.0.0.1", "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql+psycopg://arena@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_votes_on_postgresql_are_stored_once_under_concurrent_raters(postgres, make_job,
                                                                    tmp_path):
    job = make_job(tmp_path, runs=3, prompts=4, per_prompt=3)  # 36 pairs a rater
    raters = [f"rater{i}" for i in range(10)]
    store = VoteStore(postgres)
    store.add_raters("pg", raters)
    arena = Round(Runs(job), store, ArenaSpec(round="pg"), seed=0, resamples=30)
    tokens = {name: t for name, (_, t) in arena.tokens().items()}
    acknowledged = vote_concurrently(build_app(arena), tokens, raters, 30)
    check_once(store.votes("pg"), acknowledged, raters, 30)
    # the same answer again is the stored vote; another answer is refused
    first = store.votes("pg")[0]
    ticket = store.ticket(first["ticket"])
    again, new = store.vote(ticket, "overall", first["answer"])
    assert not new and again["vote_id"] == first["vote_id"]
    other = next(a for a in ("left", "right", "tie") if a != first["answer"])
    with pytest.raises(Conflict):
        store.vote(ticket, "overall", other)
    # a second process on the same database sees the same round and tokens
    second = VoteStore(postgres)
    assert len(second.votes("pg")) == 300 and second.secret() == store.secret()
    assert store.issue("pg", ticket.rater, ticket.pair, ticket.left_run) is None  # shown once
    second.close()
    store.close()
