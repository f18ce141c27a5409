"""Config files in one format: YAML in, a validated pydantic spec out, every problem at once.

Job files, serve files, `KEY=VALUE` overrides and `darkroom eval` flags all come through here, so
they share one YAML dialect (YAML 1.2 booleans: only true/false, so `on:` stays a key), the same
refusals (duplicate keys with both line numbers, alias bombs, absurd nesting) and one error
format: `SOURCE: N problem(s):` then `  field.path: message (got value)` per problem, with a
"did you mean" for misspelt keys. Imports only pydantic, PyYAML and the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from darkroom.platform.errors import UserError, did_you_mean

NO_VALUE = object()
# Expanded size of a YAML document, counting every alias use: a "billion laughs" file has a few
# lines but expands to 10^9 nodes. Real job files have a few hundred.
MAX_NODES = 100_000
MAX_DEPTH = 64


class Problem:
    """One thing wrong with a config: where (dotted field path), what, and the value found."""

    def __init__(self, path: str, message: str, value: Any = NO_VALUE) -> None:
        self.path, self.message, self.value = path or "(top level)", message, value

    def __str__(self) -> str:
        got = "" if self.value is NO_VALUE else f" (got {self.value!r:.80})"
        return f"{self.path}: {self.message}{got}"


class SpecError(UserError):
    """A config with problems; `problems` lists every one of them."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def dotted(path: Sequence[Any]) -> str:
    """A field path as `models.0.dtype`."""
    return ".".join(str(p) for p in path)


# -- YAML ---------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `on`, `yes`, `no` stay strings."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, source: str) -> tuple[Any, list[Problem]]:
    """YAML text -> (data, problems found in the text itself: duplicate keys).

    Duplicate keys are reported, not fatal, so they come out together with the file's other
    problems; the data keeps the last value. Alias bombs, deep nesting and syntax errors end
    reading at once (there is no data to check further).
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        _check_size(node, source)
        problems: list[Problem] = []
        _find_duplicates(node, [], problems)
        keys = _complex_keys(node, [])
        if keys:  # a list or mapping as a key cannot be constructed at all
            raise SpecError(source, [*problems, *keys])
        data = loader.construct_document(node)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML: {err}") from err
    except RecursionError as err:
        raise SpecError(source, [Problem("", f"nested too deeply (more than {MAX_DEPTH} "
                                         "levels); a config file is a few levels deep")]) from err
    finally:
        loader.dispose()
    return data, problems


def read_yaml_file(path: str | Path, kind: str) -> tuple[dict[str, Any], list[Problem]]:
    """A YAML file that must hold a mapping -> (data, duplicate-key problems)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} `{path}` does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{kind} `{path}` cannot be read: {err}") from err
    data, problems = parse_yaml(text, str(path))
    if data is None:
        raise SpecError(str(path), [Problem("", f"the {kind} is empty")])
    if not isinstance(data, dict):
        raise SpecError(str(path), [Problem("", f"a {kind} is a mapping of keys", data)])
    return data, problems


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse documents whose alias expansion or nesting is out of all proportion."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise SpecError(source, [Problem("", f"nested more than {MAX_DEPTH} levels deep")])
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_NODES + 1  # a node that contains itself expands forever
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                break
        sizes[id(node)] = total
        return total

    if size(root, 0) > MAX_NODES:
        raise SpecError(source, [Problem("", f"expands to more than {MAX_NODES} values through "
                                         "YAML aliases (&anchor/*alias); write the values out")])


def _complex_keys(node: yaml.Node, path: list) -> list[Problem]:
    """A problem for each key that is a list or a mapping (`? [a, b]`): config keys are names."""
    found = []
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                what = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                found.append(Problem(dotted(path), f"a key on line {line} is a {what}; keys "
                                     "are plain names (write `name: value`)"))
            else:
                found += _complex_keys(value_node, [*path, key_node.value])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _complex_keys(item, [*path, i])
    return found


def _find_duplicates(node: yaml.Node, path: list, problems: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # reported by _complex_keys
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


# -- KEY=VALUE overrides ------------------------------------------------------------------------


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
            value, found = parse_yaml(raw, f"override {key}") if raw.strip() else ("", [])
        except SpecError as err:
            problems += [Problem(key, p.message) for p in err.problems]
            continue
        except UserError as err:
            problems.append(Problem(key, f"override value is not valid YAML: {err}", raw))
            continue
        problems += [Problem(f"{key}.{p.path}", p.message) for p in found]
        problem = _set_path(data, key.strip().split("."), value)
        if problem:
            problems.append(problem)
    if problems:
        raise SpecError("overrides", problems)
    return data


def _set_path(data: Any, parts: list[str], value: Any) -> Problem | None:
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = dotted(parts[: depth + 1])
        if isinstance(node, list):
            if not (part.isascii() and part.isdecimal()) or int(part) >= len(node):
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


# -- pydantic errors -> problems ------------------------------------------------------------------

# a union member's name (int, float, ...) in an error location says nothing to a user
_UNION_TAGS = {"int", "float", "str", "bool", "constrained-int", "constrained-float",
               "function-before", "function-after", "literal['auto']", "dict[str,any]",
               "list[str]", "list[union[int,str]]"}


def try_validate(model: type[BaseModel], data: Any) -> tuple[Any, list[Problem]]:
    """(`model` from plain data, or None; every validation problem as a Problem)."""
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        return None, validation_problems(err, model)
    except RecursionError as err:
        return None, [Problem("", f"nested too deeply: {err}")]


def validate(model: type[BaseModel], data: Any, source: str,
             problems: Sequence[Problem] = ()) -> Any:
    """`model` from plain data, or a SpecError listing `problems` and every validation error."""
    spec, found = try_validate(model, data)
    found = [*problems, *found]
    if found:
        raise SpecError(source, found)
    return spec


def validation_problems(err: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Each pydantic error as a Problem: dotted path, plain message, a hint for unknown keys."""
    return [_problem(e, root) for e in err.errors()]


def _problem(error: dict[str, Any], root: type[BaseModel]) -> Problem:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and _is_union_tag(p)))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return Problem(dotted(loc), _unknown_key_message(root, loc))
    if error["type"] == "missing":
        return Problem(dotted(loc), "required key is missing")
    return Problem(dotted(loc), message, error.get("input", NO_VALUE))


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS or part.startswith(("function-", "literal[", "json-or-python"))


def _unknown_key_message(root: type[BaseModel], loc: Sequence[Any]) -> str:
    key = str(loc[-1])
    known = field_names(root, loc[:-1])
    close = did_you_mean(key, known) if known else ""
    if close.startswith(" did you mean"):
        return f"unknown key `{key}`;{close}"
    elsewhere = [dotted(p) for p in _paths_of(root, key) if tuple(p) != tuple(loc)]
    if elsewhere:
        return f"unknown key `{key}` here; it belongs under {' or '.join(elsewhere)}"
    return f"unknown key `{key}`;{close}"


def field_names(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys allowed at a location of a config (for "did you mean")."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _paths_of(model: type[BaseModel], key: str, prefix: tuple = (), seen=None) -> list[tuple]:
    """Where in the config tree a key is allowed, e.g. `dtype` -> [("models", "N", "dtype")]."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen = seen | {model}
    found = []
    for name, field in model.model_fields.items():
        shown = field.alias or name
        here = (*prefix, shown)
        if shown == key:
            found.append(prefix or ("(top level)",))
        inner = _model_in(field.annotation)
        if inner is not None:
            listed = "list" in str(field.annotation)
            found += _paths_of(inner, key, (*here, "N") if listed else here, seen)
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
