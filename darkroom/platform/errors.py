"""Errors that mean "the input is wrong": the CLI turns them into a message and exit code 2."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterable
from typing import Any


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


def cause_of_kind(err: BaseException | None, kind: type) -> Any:
    """The first exception of type `kind` in `err`'s chain of causes (Ray wraps a task's or an
    actor's exception in its own, as `cause`), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


# how a traceback's last line names a Darkroom exception: `darkroom.platform.errors.X: message`
_RAISED = re.compile(r"^(?:\x1b\[[0-9;]*m)?(darkroom(?:\.\w+)+)\.(\w+): (.+)$", re.M)


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError behind `err`: in its chain of causes, or, where Ray kept only the text of
    a worker's exception (an actor's constructor, a Ray Data task), named in that text."""
    found = cause_of_kind(err, UserError)
    if found is not None:
        return found
    for module, name, message in reversed(_RAISED.findall(str(err))):
        try:
            kind = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(kind, type) and issubclass(kind, UserError):
            return UserError(message)
    return None
