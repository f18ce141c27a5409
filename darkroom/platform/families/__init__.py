"""Model families: one module each (`sd.py`, `sdxl.py`, `dit.py`, ...), found by looking.

A family module defines a `Family` and registers it; nothing else names it. Every list of
family names (`tiny:*`, `random:*`, the `family` field of a model spec, `darkroom models list`)
comes from the registry. Importing a family module loads no torch.
"""

from __future__ import annotations

from darkroom.platform.errors import UserError, did_you_mean
from darkroom.platform.families.family import (
    PLUGINS_ENV,
    Family,
    FullSize,
    Grid,
    register,
    registered,
)

__all__ = ["PLUGINS_ENV", "Family", "FullSize", "Grid", "family_named", "fullsize_families",
           "pipeline_families", "register", "registered"]


def family_named(name: str) -> Family:
    """The registered family of that name; a UserError with "did you mean" otherwise."""
    families = registered()
    if name not in families:
        raise UserError(f"unknown model family `{name}`;{did_you_mean(name, families)}")
    return families[name]


def pipeline_families() -> dict[str, str]:
    """diffusers pipeline class name -> the family that loads it."""
    table: dict[str, str] = {}
    for family in registered().values():
        for name in (family.pipeline, *family.aliases):
            if name:
                table[name] = family.name
    return table


def fullsize_families() -> dict[str, str]:
    """`random:<name>` -> its family."""
    return {entry.name: family.name for family in registered().values()
            for entry in family.fullsize}
