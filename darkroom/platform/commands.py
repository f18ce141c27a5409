"""`darkroom models ...` and `darkroom zoo ...`: tiny pipelines, registry names, bundled models.

Building the parser imports nothing heavy; torch and diffusers load inside the handlers.
"""

from __future__ import annotations

import argparse

from darkroom.platform.families import registered


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `models tiny|list`, `zoo train-digits` and `suites ...` to the `darkroom` command."""
    from darkroom.platform.suites.commands import register as register_suites
    from darkroom.platform.zoo.train_digits import add_arguments

    register_suites(subparsers)
    models = subparsers.add_parser("models", help="model registry: tiny pipelines, names")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    tiny = sub.add_parser("tiny", help="save a random-init tiny pipeline to a folder")
    tiny.add_argument("family", choices=sorted(registered()))
    tiny.add_argument("--out", required=True, help="folder to write (diffusers layout)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_tiny)
    lora = sub.add_parser("random-lora", help="save a random LoRA adapter for a model (a "
                          "stand-in for a fine-tune, for trying adapters offline)")
    lora.add_argument("model", help="tiny:FAMILY, builtin:NAME or a local folder")
    lora.add_argument("--out", required=True, help="folder to write the adapter into")
    lora.add_argument("--seed", type=int, default=0, help="a different seed, another adapter")
    lora.add_argument("--rank", type=int, default=4, help="LoRA rank")
    lora.set_defaults(handler=_random_lora)
    listing = sub.add_parser("list", help="registry names, families and samplers")
    listing.set_defaults(handler=_list)

    zoo = subparsers.add_parser("zoo", help="bundled small trained models")
    commands = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    commands.required = True
    train = commands.add_parser(
        "train-digits", help="train the digits classifier, VAE, DiT and LDM (~30 min, 1 thread)"
    )
    add_arguments(train)
    train.set_defaults(handler=_train_digits)


def _tiny(args: argparse.Namespace) -> int:
    from darkroom.platform.models.builds import save_tiny

    out = save_tiny(args.family, args.out, seed=args.seed)
    print(f"saved tiny {args.family} pipeline to {out}")
    return 0


def _random_lora(args: argparse.Namespace) -> int:
    from darkroom.platform.models.adapters import save_random_lora

    path = save_random_lora(args.model, args.out, args.seed, args.rank)
    print(f"saved a random LoRA for {args.model} to {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from darkroom.platform.models.names import registry_names
    from darkroom.platform.samplers import SAMPLERS

    print("models:   " + ", ".join(registry_names()))
    print("families: " + ", ".join(f"{f.name} ({f.description})" for f in registered().values()))
    print("samplers: " + ", ".join(SAMPLERS))
    return 0


def _train_digits(args: argparse.Namespace) -> int:
    from darkroom.platform.zoo.train_digits import run

    return run(args)
