"""The `darkroom` command: each subcommand is registered by the part of the package it belongs to.

Exit codes: 0 success, 2 bad input (a message, never a traceback), 1 a failure of the work itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from darkroom.platform.errors import UserError, user_error_in

# Each module has `register(subparsers)`, which adds its subcommands with `handler=fn(args) -> int`.
COMMAND_MODULES = [
    "darkroom.jobs.commands",
    "darkroom.evals.commands",
    "darkroom.evals.arena.commands",
    "darkroom.serve.commands",
    "darkroom.platform.commands",
]

# commands that may load weights from the model hub: they check once whether it is reachable
HUB_COMMANDS = {"run", "eval", "gate", "replay", "serve"}
VERBOSE_HELP = ("also show Ray's logs and progress bars, its known-harmless warnings and a line "
                "per file written")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2
        """Usage and the message on stderr, exit code 2 (bad input)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `darkroom` parser, with every part's subcommands registered."""
    parser = _Parser(prog="darkroom", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for command in subparsers.choices.values():  # also after the command: `darkroom run X -v`
        command.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                             help=VERBOSE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `darkroom` command; returns its exit code (0 ok, 2 bad input, 1 failure)."""
    # one line per command, not one MLflow download bar per run an artifact is read from
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pydantic import BaseModel, ValidationError

    args = build_parser().parse_args(argv)
    from darkroom.platform import console

    console.configure(verbose=args.verbose)
    try:
        if args.command in HUB_COMMANDS and not getattr(args, "dry_run", False):
            from darkroom.platform.offline import detect_offline

            reason = detect_offline()
            if reason:
                print(f"note: {reason}; working offline (HF_HUB_OFFLINE=1): only weights "
                      "already on this machine load", file=sys.stderr)
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:  # a spec built in code from flags: same format as files
        from darkroom.platform.config import SpecError, validation_problems

        problems = validation_problems(err, BaseModel)
        print(f"error: {SpecError(err.title, problems)}", file=sys.stderr)
        return 2
    except RecursionError:
        print("error: the input is nested too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `darkroom ... | head`: the reader has all it wanted
        sys.stderr.close()
        return 0
    except Exception as err:  # a failure of the work itself, unless bad input lies beneath
        found = user_error_in(err)
        if found is not None:  # raised in a Ray task or actor (a model that will not load)
            print(f"error: {found}", file=sys.stderr)
            return 2
        if os.environ.get("DARKROOM_DEBUG"):
            traceback.print_exc()
        print(f"failed: {type(err).__name__}: {err}", file=sys.stderr)
        print("(set DARKROOM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
