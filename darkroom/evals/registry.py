"""The registries of scorers, feature extractors, metrics and the eval settings they add, found in
the modules that declare them (lm-evaluation-harness `lm_eval/api/registry.py` keeps registries
the same way).

Every module of `darkroom.evals.scorers`, and `darkroom.evals.metrics.corpus`, may list its
units in `UNITS` (see `units.py`). The modules are imported once, on first use; they import no
torch, transformers or Ray at module level, so `darkroom validate`, `schema` and `--help` read
the registries without loading a model. A name declared twice is an error, and so are a setting
declared two different ways and a per-image column that two scorers add; a name that is not
registered is a UserError with a "did you mean".
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field

from darkroom.evals.units import Extractor, Metric, Scorer, Setting
from darkroom.platform.errors import UserError, did_you_mean

MODULES = ("darkroom.evals.metrics.corpus",)  # searched first: its metrics lead every listing
PACKAGES = ("darkroom.evals.scorers",)  # every module, in name order


@dataclass
class Registry:
    """What the modules declare, by name (settings by their field), in the order found."""

    scorers: dict[str, Scorer] = field(default_factory=dict)
    extractors: dict[str, Extractor] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)


def _modules() -> list[str]:
    names = list(MODULES)
    for package in PACKAGES:
        found = importlib.import_module(package).__path__
        names += [f"{package}.{m.name}" for m in sorted(pkgutil.iter_modules(found),
                                                        key=lambda m: m.name)]
    return names


def _add(table: dict, kind: str, name: str, unit: object, where: dict, module: str) -> None:
    if name in table and table[name] != unit:
        raise ValueError(f"{kind} `{name}` is declared twice: in {where[kind, name]} and "
                         f"{module}")
    table.setdefault(name, unit)
    where.setdefault((kind, name), module)


@functools.cache
def registry() -> Registry:
    """Every unit of the registered modules (imported on the first call)."""
    found, where, columns = Registry(), {}, {}
    tables = {Scorer: ("scorer", found.scorers), Extractor: ("feature extractor",
                                                             found.extractors),
              Metric: ("metric", found.metrics)}
    for module in _modules():
        for unit in getattr(importlib.import_module(module), "UNITS", ()):
            kind, table = tables[type(unit)]
            _add(table, kind, unit.name, unit, where, module)
            for column in getattr(unit, "columns", ()):  # a column has one scorer
                _add(columns, "column", column, unit.name, where, module)
            owned = [unit.weights] if isinstance(unit, Scorer | Extractor) else []
            for setting in [*owned, *getattr(unit, "settings", ())]:
                if setting is not None:
                    _add(found.settings, "setting", setting.field, setting, where, module)
    return found


def scorers() -> dict[str, Scorer]:
    """Per-image parts by name."""
    return registry().scorers


def extractors() -> dict[str, Extractor]:
    """Feature extractors by name."""
    return registry().extractors


def metrics() -> dict[str, Metric]:
    """Metrics by name: corpus metrics first, then the per-image ones by module."""
    return registry().metrics


def settings() -> dict[str, Setting]:
    """The keys of `eval:` the units add, by field."""
    return registry().settings


def _lookup(kind: str, name: str, table: dict):
    if name not in table:
        raise UserError(f"unknown {kind} `{name}`;{did_you_mean(name, table)}")
    return table[name]


def scorer(name: str) -> Scorer:
    """A registered scorer; an unknown name raises a UserError with a suggestion."""
    return _lookup("scorer", name, scorers())


def extractor(name: str) -> Extractor:
    """A registered feature extractor; an unknown name raises a UserError with a suggestion."""
    return _lookup("feature extractor", name, extractors())


def metric(name: str) -> Metric:
    """A registered metric; an unknown name raises a UserError with a suggestion."""
    return _lookup("metric", name, metrics())
