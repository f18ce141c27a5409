"""`darkroom models ...`: build tiny pipelines and list registry names."""

from __future__ import annotations

import argparse

from darkroom.platform.models import FAMILIES, registry_names
from darkroom.platform.samplers import SAMPLERS
from darkroom.platform.tiny import TINY_BUILDERS, save_tiny


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="model registry: tiny pipelines, names")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    tiny = sub.add_parser("tiny", help="save a random-init tiny pipeline to a folder")
    tiny.add_argument("family", choices=sorted(TINY_BUILDERS))
    tiny.add_argument("--out", required=True, help="folder to write (diffusers layout)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_tiny)
    listing = sub.add_parser("list", help="registry names, families and samplers")
    listing.set_defaults(handler=_list)


def _tiny(args: argparse.Namespace) -> int:
    out = save_tiny(args.family, args.out, seed=args.seed)
    print(f"saved tiny {args.family} pipeline to {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    print("models:   " + ", ".join(registry_names()))
    print("families: " + ", ".join(f"{f.name} ({f.description})" for f in FAMILIES.values()))
    print("samplers: " + ", ".join(SAMPLERS))
    return 0
