"""Job files as YAML: duplicate keys rejected, `key=value` overrides, problems with field paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from darkroom.platform.errors import UserError

NO_VALUE = object()


class Problem:
    """One thing wrong with a job file: where, what, and the value found there."""

    def __init__(self, path: str, message: str, value: Any = NO_VALUE) -> None:
        self.path, self.message, self.value = path or "(top level)", message, value

    def __str__(self) -> str:
        got = "" if self.value is NO_VALUE else f" (got {self.value!r:.80})"
        return f"{self.path}: {self.message}{got}"


class JobSpecError(UserError):
    """A job file with problems; `problems` lists every one of them."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """YAML text -> a mapping; duplicate keys anywhere are problems, not silent overwrites."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML: {err}") from err
    if node is None:
        raise JobSpecError(source, [Problem("", "the job file is empty; start from "
                                            "configs/jobs/smoke.yaml")])
    problems: list[Problem] = []
    _find_duplicates(node, [], problems)
    if problems:
        raise JobSpecError(source, problems)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise JobSpecError(source, [Problem("", "a job file is a mapping of keys (name, prompts, "
                                            "models, ...)", data)])
    return data


def _find_duplicates(node: yaml.Node, path: list, problems: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in lines:
                problems.append(Problem(
                    dotted([*path, key]),
                    f"duplicate key `{key}` (lines {lines[key]} and {line}); keep one",
                ))
            lines.setdefault(key, line)
            _find_duplicates(value_node, [*path, key], problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _find_duplicates(item, [*path, i], problems)


def dotted(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path)


# -- key=value overrides ----------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`sweep.steps=[2,4]`, `prompts.limit=4`, `models.0.dtype=bf16`: values are YAML."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(f"override {item!r}", "write overrides as KEY=VALUE, "
                                    "e.g. sweep.steps=[2,4] or prompts.limit=8"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            problems.append(Problem(key, f"override value is not valid YAML: {err}", raw))
            continue
        problem = _set_path(data, key.strip().split("."), value)
        if problem:
            problems.append(problem)
    if problems:
        raise JobSpecError("overrides", problems)
    return data


def _set_path(data: Any, parts: list[str], value: Any) -> Problem | None:
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = dotted(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return Problem(here, f"index must be 0..{len(node) - 1}", part)
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and not isinstance(node.get(part), dict | list):
                node[part] = {}
        else:
            return Problem(here, f"`{dotted(parts[:depth])}` is not a section", node)
        if last:
            node[index] = value
        else:
            node = node[index]
    return None
