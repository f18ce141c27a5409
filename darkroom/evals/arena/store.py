"""The vote store: every pair shown to a rater (a ticket) and every answer, in a database.

Any SQLAlchemy URL works (PostgreSQL for a team: `postgresql+psycopg://...`); the default is an
embedded SQLite file. SQLite runs in WAL mode; a vote commits with `synchronous=FULL`, so it is on
disk when its transaction commits, and the app answers only after that: a server killed at any
moment (or a machine that loses power) keeps every vote it acknowledged. Tickets commit with
`synchronous=NORMAL`: they survive the process being killed, and one lost to a power loss only
means that pair may be shown again. Writes to SQLite take one lock per process (SQLite has one
writer at a time; waiting on a lock beats retrying on "database is locked").

A vote is unique per (ticket, question): a retried request stores nothing twice and answers as
the first did; a different answer to the same question is refused. A ticket is unique per
(round, rater, pair, showing): a rater is shown each pair once unless repeats are allowed.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

ANSWERS = ("left", "right", "tie", "both_bad")
ROLES = ("rater", "viewer")

metadata = sa.MetaData()
settings_table = sa.Table(
    "arena_settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
raters_table = sa.Table(
    "arena_raters", metadata,
    sa.Column("round", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(10), nullable=False),
    sa.Column("added_at", sa.DateTime, nullable=False),
)
tickets_table = sa.Table(
    "arena_tickets", metadata,
    sa.Column("ticket", sa.String(32), primary_key=True),
    sa.Column("round", sa.String(200), nullable=False),
    sa.Column("rater", sa.String(100), nullable=False),
    sa.Column("prompt_id", sa.String(200), nullable=False),
    sa.Column("sample_idx", sa.Integer, nullable=False),
    sa.Column("run_a", sa.String(200), nullable=False),  # the pair, in name order
    sa.Column("run_b", sa.String(200), nullable=False),
    sa.Column("left_run", sa.String(200), nullable=False),  # the sides it was shown with
    sa.Column("right_run", sa.String(200), nullable=False),
    sa.Column("showing", sa.Integer, nullable=False),  # 0, or the repeat's number
    sa.Column("issued_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("round", "rater", "prompt_id", "sample_idx", "run_a", "run_b",
                        "showing", name="arena_tickets_once"),
    sa.Index("arena_tickets_pair", "round", "run_a", "run_b"),
    sa.Index("arena_tickets_rater", "round", "rater"),
)
votes_table = sa.Table(
    "arena_votes", metadata,
    sa.Column("vote_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ticket", sa.String(32), nullable=False),
    sa.Column("question", sa.String(64), nullable=False),
    sa.Column("round", sa.String(200), nullable=False),
    sa.Column("rater", sa.String(100), nullable=False),
    sa.Column("prompt_id", sa.String(200), nullable=False),
    sa.Column("sample_idx", sa.Integer, nullable=False),
    sa.Column("left_run", sa.String(200), nullable=False),
    sa.Column("right_run", sa.String(200), nullable=False),
    sa.Column("answer", sa.String(10), nullable=False),
    sa.Column("issued_at", sa.DateTime, nullable=False),
    sa.Column("voted_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("ticket", "question", name="arena_votes_once"),
    sa.Index("arena_votes_round", "round", "question"),
    sa.Index("arena_votes_rater", "round", "rater"),
)


class Conflict(ValueError):
    """The question of this ticket was already answered differently."""


@dataclass(frozen=True)
class Ticket:
    """One pair as shown to one rater: the key, the pair in name order and the sides."""

    ticket: str
    round: str
    rater: str
    prompt_id: str
    sample_idx: int
    run_a: str
    run_b: str
    left_run: str
    right_run: str
    showing: int
    issued_at: dt.datetime

    @property
    def pair(self) -> tuple[str, int, str, str]:
        """(prompt_id, sample_idx, run_a, run_b): the pair whatever its sides."""
        return self.prompt_id, self.sample_idx, self.run_a, self.run_b


def now() -> dt.datetime:
    """The current time in UTC (stored without its zone: every time in the store is UTC)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class VoteStore:
    """The tables of a store at a SQLAlchemy URL (created when absent)."""

    def __init__(self, url: str) -> None:
        self.url = url
        pooled = {} if url.startswith("sqlite") else {"pool_size": 20, "max_overflow": 20}
        self.engine = sa.create_engine(url, **pooled)
        self.sqlite = self.engine.dialect.name == "sqlite"
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._lock = threading.Lock()
        with self._write() as connection:
            metadata.create_all(connection)

    def close(self) -> None:
        """Release the store's connections."""
        self.engine.dispose()

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sa.Connection]:
        """A transaction that commits on leaving. On SQLite, `durable` (votes) waits for the
        disk (synchronous=FULL); otherwise (tickets) the commit survives the process being
        killed, but the last ones may not survive a power loss (synchronous=NORMAL)."""
        if not self.sqlite:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._lock, self.engine.connect() as connection:
            connection.exec_driver_sql(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            yield connection
            connection.commit()

    def _read(self, query) -> list[sa.Row]:
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    # -- raters ---------------------------------------------------------------------------------

    def secret(self) -> str:
        """The store's secret (made once), from which rater tokens are derived."""
        found = self._read(sa.select(settings_table.c.value).where(
            settings_table.c.key == "secret"))
        if found:
            return found[0].value
        try:
            with self._write() as connection:
                connection.execute(settings_table.insert().values(
                    key="secret", value=secrets.token_hex(32)))
        except sa.exc.IntegrityError:  # another process made it first
            pass
        return self.secret()

    def add_raters(self, round_name: str, names: list[str], role: str = "rater") -> list[str]:
        """Add people to a round (names already there keep their role); the new ones."""
        have = self.raters(round_name)
        new = [n for n in dict.fromkeys(names) if n not in have]
        if new:
            with self._write() as connection:
                connection.execute(raters_table.insert(), [
                    {"round": round_name, "name": n, "role": role, "added_at": now()}
                    for n in new])
        return new

    def raters(self, round_name: str) -> dict[str, str]:
        """name -> role of everyone in the round."""
        rows = self._read(sa.select(raters_table.c.name, raters_table.c.role).where(
            raters_table.c.round == round_name))
        return {r.name: r.role for r in rows}

    # -- tickets --------------------------------------------------------------------------------

    def issue(self, round_name: str, rater: str, pair: tuple[str, int, str, str],
              left_run: str, showing: int = 0) -> Ticket | None:
        """Record that `rater` is shown `pair` with `left_run` on the left; None when that
        showing was already issued (a concurrent request of the same rater)."""
        prompt_id, sample_idx, run_a, run_b = pair
        ticket = Ticket(secrets.token_hex(16), round_name, rater, prompt_id, int(sample_idx),
                        run_a, run_b, left_run, run_b if left_run == run_a else run_a, showing,
                        now())
        try:
            with self._write(durable=False) as connection:
                connection.execute(tickets_table.insert().values(**ticket.__dict__))
        except sa.exc.IntegrityError:
            return None
        return ticket

    def ticket(self, ticket_id: str) -> Ticket | None:
        """A ticket by its id."""
        found = self._read(sa.select(tickets_table).where(tickets_table.c.ticket == ticket_id))
        return Ticket(**found[0]._mapping) if found else None

    def rater_tickets(self, round_name: str, rater: str, questions: int
                      ) -> tuple[Counter, Ticket | None, int]:
        """How often the rater was shown each pair (prompt_id, sample_idx, run_a, run_b); their
        oldest ticket with fewer than `questions` answers, if any, and how many it has."""
        t, v = tickets_table.c, votes_table.c
        answered = (sa.select(v.ticket, sa.func.count().label("n")).where(
            v.round == round_name, v.rater == rater).group_by(v.ticket).subquery())
        rows = self._read(
            sa.select(tickets_table, sa.func.coalesce(answered.c.n, 0).label("answered"))
            .outerjoin(answered, answered.c.ticket == t.ticket)
            .where(t.round == round_name, t.rater == rater)
            .order_by(t.issued_at, t.ticket))
        seen = Counter((r.prompt_id, r.sample_idx, r.run_a, r.run_b) for r in rows)
        pending = next((r for r in rows if r.answered < questions), None)
        if pending is None:
            return seen, None, 0
        fields = Ticket.__dataclass_fields__
        return seen, Ticket(**{k: pending._mapping[k] for k in fields}), int(pending.answered)

    def showings(self, round_name: str) -> Counter:
        """How often each pair (prompt_id, sample_idx, run_a, run_b) was shown, to anyone."""
        t = tickets_table.c
        rows = self._read(sa.select(t.prompt_id, t.sample_idx, t.run_a, t.run_b,
                                    sa.func.count().label("n"))
                          .where(t.round == round_name)
                          .group_by(t.prompt_id, t.sample_idx, t.run_a, t.run_b))
        return Counter({(r.prompt_id, r.sample_idx, r.run_a, r.run_b): r.n for r in rows})

    # -- votes ----------------------------------------------------------------------------------

    def vote(self, ticket: Ticket, question: str, answer: str) -> tuple[dict[str, Any], bool]:
        """Store an answer to a ticket's question, committed before this returns; the vote and
        whether it is new (False: the same answer was stored before). A different answer to an
        answered question raises Conflict."""
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        row = {"ticket": ticket.ticket, "question": question, "round": ticket.round,
               "rater": ticket.rater, "prompt_id": ticket.prompt_id,
               "sample_idx": ticket.sample_idx, "left_run": ticket.left_run,
               "right_run": ticket.right_run, "answer": answer,
               "issued_at": ticket.issued_at, "voted_at": now()}
        try:
            with self._write() as connection:
                found = connection.execute(votes_table.insert().values(**row))
            return {**row, "vote_id": found.inserted_primary_key[0]}, True
        except sa.exc.IntegrityError:
            v = votes_table.c
            earlier = self._read(sa.select(votes_table).where(
                v.ticket == ticket.ticket, v.question == question))
            if not earlier:
                raise
            stored = dict(earlier[0]._mapping)
            if stored["answer"] != answer:
                raise Conflict(f"question `{question}` of this pair was already answered "
                               f"`{stored['answer']}`") from None
            return stored, False

    def answered(self, ticket_id: str) -> dict[str, str]:
        """question -> answer of a ticket's votes so far."""
        v = votes_table.c
        rows = self._read(sa.select(v.question, v.answer).where(v.ticket == ticket_id))
        return {r.question: r.answer for r in rows}

    def vote_count(self, round_name: str, rater: str | None = None) -> int:
        """How many votes the round (or one rater in it) has."""
        v = votes_table.c
        query = sa.select(sa.func.count()).where(v.round == round_name)
        if rater is not None:
            query = query.where(v.rater == rater)
        return int(self._read(query)[0][0])

    def tally(self, round_name: str, question: str) -> list[tuple[str, str, str, int]]:
        """(left_run, right_run, answer, count) of a question's votes."""
        v = votes_table.c
        rows = self._read(sa.select(v.left_run, v.right_run, v.answer,
                                    sa.func.count().label("n"))
                          .where(v.round == round_name, v.question == question)
                          .group_by(v.left_run, v.right_run, v.answer))
        return [(r.left_run, r.right_run, r.answer, int(r.n)) for r in rows]

    def votes(self, round_name: str | None = None) -> list[dict[str, Any]]:
        """Every vote (of one round, or all), in the order stored."""
        query = sa.select(votes_table).order_by(votes_table.c.vote_id)
        if round_name is not None:
            query = query.where(votes_table.c.round == round_name)
        return [dict(r._mapping) for r in self._read(query)]


EXPORT_SCHEMA = [
    ("vote_id", "int64"), ("round", "string"), ("question", "string"), ("rater", "string"),
    ("prompt_id", "string"), ("sample_idx", "int64"), ("left_run", "string"),
    ("right_run", "string"), ("answer", "string"), ("preferred_run", "string"),
    ("issued_at", "timestamp"), ("voted_at", "timestamp"), ("ticket", "string"),
]


def to_arrow(votes: list[dict[str, Any]]):
    """Votes as an Arrow table (EXPORT_SCHEMA: times in UTC; `preferred_run` null for a tie or
    both bad)."""
    import pyarrow as pa

    types = {"int64": pa.int64(), "string": pa.string(),
             "timestamp": pa.timestamp("us", tz="UTC")}
    rows = [{**v, "preferred_run": v["left_run"] if v["answer"] == "left" else
             v["right_run"] if v["answer"] == "right" else None,
             "issued_at": v["issued_at"].replace(tzinfo=dt.UTC),
             "voted_at": v["voted_at"].replace(tzinfo=dt.UTC)} for v in votes]
    schema = pa.schema([(name, types[kind]) for name, kind in EXPORT_SCHEMA])
    return pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
