"""`darkroom suites list|fetch|pin`: the registered benchmark suites, their files in the cache,
and the SHA-256 of the files whose publishers give none."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `suites list|fetch|pin` to the `darkroom` command."""
    suites = subparsers.add_parser("suites", help="benchmark suites: list, fetch, pin")
    sub = suites.add_subparsers(dest="suites_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the suites, their files, licences and defaults").set_defaults(
        handler=_list)
    fetch = sub.add_parser("fetch", help="download a suite's files into the cache and verify "
                           "them (what `darkroom run` does on first use)")
    fetch.add_argument("name")
    fetch.set_defaults(handler=_fetch)
    pin = sub.add_parser("pin", help="download a suite's files that have no published "
                         "SHA-256 and record their SHA-256 here (trust on first use)")
    pin.add_argument("name")
    pin.add_argument("--file", help="take this file (or a folder of the suite's files) instead "
                     "of downloading")
    pin.set_defaults(handler=_pin)


def _list(args: argparse.Namespace) -> int:
    from darkroom.platform.suites import describe, suites

    print("\n".join(describe(s) for s in suites().values()))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from darkroom.platform.suites import items, suite
    from darkroom.platform.suites.files import ensure

    found = suite(args.name)
    for file in found.files:
        print(f"{ensure(found, file)}")
    print(f"{args.name}: {len(items(args.name))} prompts")
    return 0


def _pin(args: argparse.Namespace) -> int:
    from darkroom.platform.suites import items, suite
    from darkroom.platform.suites.files import pin

    recorded = pin(suite(args.name), Path(args.file) if args.file else None)
    for name, digest in recorded.items():
        print(f"{args.name}/{name}: {digest}")
    if not recorded:
        print(f"{args.name}: every file has a published SHA-256; nothing to pin")
    print(f"{args.name}: {len(items(args.name))} prompts")
    return 0
