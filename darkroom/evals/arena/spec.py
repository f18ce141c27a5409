"""A rating round's settings (`darkroom arena` builds them from its flags) and the people in it.

A person's token is derived from the store's secret, the round and their name (HMAC-SHA256), so
the same link works after a restart and nothing secret is stored per person; a rater's token
rates, a viewer's token reads the results.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Question(BaseModel):
    """One question raters answer about each pair: left, right, tie or both bad."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$",
                    description="a short name (lower-case letters, digits, _), used in MLflow")
    text: str = Field(min_length=1, max_length=200, description="what raters read")


DEFAULT_QUESTIONS = (Question(id="overall", text="Which image is better?"),)


class ArenaSpec(BaseModel):
    """A rating round: its name, questions, whether a rater may see a pair again, and where the
    app listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: str = Field(min_length=1, max_length=200, description="the round's name in the store")
    questions: tuple[Question, ...] = Field(DEFAULT_QUESTIONS, min_length=1, max_length=4)
    repeats: bool = Field(False, description="show a rater pairs they have rated before "
                          "(once every pair has been shown to them)")
    host: str = Field("127.0.0.1", description="the address to listen on")
    port: int = Field(8765, ge=0, le=65535, description="the port (0: any free one)")

    @field_validator("questions")
    @classmethod
    def _distinct(cls, questions: tuple[Question, ...]) -> tuple[Question, ...]:
        ids = [q.id for q in questions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"question ids must differ, got {', '.join(ids)}")
        return questions


def token(secret: str, round_name: str, name: str, role: str) -> str:
    """A person's token in a round (32 hex digits)."""
    message = "\0".join((round_name, name, role)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def digest(value: str) -> str:
    """The SHA-256 of a token: tokens are looked up by it, never compared as text."""
    return hashlib.sha256(value.encode()).hexdigest()
