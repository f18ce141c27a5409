"""A rating round as the app and the command use it: its runs, store and settings, who may log
in, what a rater sees next, and its results (recomputed when the votes change)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from darkroom.evals.arena.judges import judges
from darkroom.evals.arena.pairing import Selector
from darkroom.evals.arena.rankings import RESAMPLES, Results, question_result
from darkroom.evals.arena.source import Runs
from darkroom.evals.arena.spec import ArenaSpec, digest, token
from darkroom.evals.arena.store import Ticket, VoteStore
from darkroom.platform.data.storage import Location


class Round:
    """One round of one job's runs in a vote store."""

    def __init__(self, runs: Runs, store: VoteStore, spec: ArenaSpec,
                 judgements: Location | None = None, seed: int | None = None,
                 resamples: int = RESAMPLES) -> None:
        self.runs, self.store, self.spec = runs, store, spec
        self.name = spec.round
        self.judgements = judgements
        self.resamples = resamples
        self.selector = Selector(runs, store, spec.round, spec.questions[0].id, spec.repeats,
                                 seed)
        self._people: dict[str, tuple[str, str]] = {}
        self._results: tuple[int, Results] | None = None
        self._lock = threading.Lock()

    # -- people ---------------------------------------------------------------------------------

    def tokens(self) -> dict[str, tuple[str, str]]:
        """name -> (role, token) of everyone in the round."""
        secret = self.store.secret()
        return {name: (role, token(secret, self.name, name, role))
                for name, role in self.store.raters(self.name).items()}

    def person(self, given: str) -> tuple[str, str] | None:
        """(name, role) of the holder of a token, or None (people added since are looked up)."""
        key = digest(given)
        if key not in self._people:
            self._people = {digest(t): (name, role) for name, (role, t) in self.tokens().items()}
        return self._people.get(key)

    # -- rating ---------------------------------------------------------------------------------

    def next_ticket(self, rater: str) -> tuple[Ticket | None, int, dict[str, int]]:
        """The rater's unanswered ticket, else a new one from the active design (None when
        there is no pair left for them); how many of its questions are answered; and their
        progress."""
        seen, found, answered = self.store.rater_tickets(self.name, rater,
                                                         len(self.spec.questions))
        for _ in range(5):  # a concurrent request of the same rater may take the same showing
            if found is not None:
                break
            choice = self.selector.next(rater, seen)
            if choice is None:
                break
            found = self.store.issue(self.name, rater, choice.pair, choice.left_run,
                                     choice.showing)
            if found is not None:
                self.selector.shown(found.pair)
                seen[found.pair] += 1
        total = self.runs.total_pairs()
        progress = {"votes": self.store.vote_count(self.name, rater),
                    "left": max(total - len(seen), 0), "total": total}
        return found, answered, progress

    def ticket_view(self, ticket: Ticket, answered: int = 1) -> dict[str, Any]:
        """What the rating page shows of a ticket (with `answered` questions answered): no run
        ids or names, raters vote blind."""
        return {"done": False, "ticket": ticket.ticket,
                "prompt": self.runs.prompt((ticket.prompt_id, ticket.sample_idx)),
                "questions": [q.model_dump() for q in self.spec.questions],
                "answered": self.store.answered(ticket.ticket) if answered else {},
                "images": {side: f"/api/image/{ticket.ticket}/{side}"
                           for side in ("left", "right")}}

    def image(self, ticket: Ticket, side: str) -> bytes:
        """The PNG of one side of a ticket."""
        run = ticket.left_run if side == "left" else ticket.right_run
        return self.runs.image(run, (ticket.prompt_id, ticket.sample_idx))

    # -- results --------------------------------------------------------------------------------

    def results(self) -> Results:
        """The round's results, recomputed only when the number of votes has changed."""
        count = self.store.vote_count(self.name)
        with self._lock:
            if self._results is not None and self._results[0] == count:
                return self._results[1]
            votes = self.store.votes(self.name)
            texts = {q.id: q.text for q in self.spec.questions}
            for vote in votes:  # questions asked in an earlier session of the round
                texts.setdefault(vote["question"], vote["question"])
            found = Results(self.name, self.runs.ids, dict(self.runs.names), [
                question_result(q, text, [v for v in votes if v["question"] == q],
                                self.runs.ids, self.runs.names,
                                judges(self.runs, q, self.judgements), self.resamples)
                for q, text in texts.items()], dict(Counter(v["rater"] for v in votes)))
            self._results = (count, found)
            return found
