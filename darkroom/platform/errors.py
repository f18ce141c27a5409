"""Errors that mean "the input is wrong": the CLI turns them into a message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from a user: a message that names the field, the bad value and the fix."""


class ModelLoadError(UserError):
    """A model could not be loaded: missing weights, no network, wrong folder."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A ' did you mean `x`?' suffix for a misspelt registry name, or a list of the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        return f" did you mean `{close[0]}`?"
    shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
    return f" known: {shown}"
