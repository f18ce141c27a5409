"""Prompt sources -> a list of `Prompt`s, each with a stable id.

Sources: an inline list, a file (.txt one per line, .jsonl, .csv, .parquet with a column mapping),
class labels (DiT), or a folder of control images (ControlNet). Every way a source can be wrong
(missing, unreadable, empty, a missing column, repeated ids) is a `PromptError` naming the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkroom.jobs.spec import ColumnMap, PromptSource

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class PromptError(ValueError):
    """A prompt source that cannot be used; `path` is the field of the job file to fix."""

    def __init__(self, path: str, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.path, self.message, self.value = path, message, value


@dataclass(frozen=True)
class Prompt:
    """One prompt of a job: its id and conditioning (text, class, or a control image file)."""

    prompt_id: str
    prompt: str = ""
    negative_prompt: str | None = None  # None: the job's generation.negative_prompt
    class_label: int | str | None = None
    control_image: str | None = None  # path of the image file


def _read_txt(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError("prompts.file", f"line {number} of {path.name} is not JSON: {err}",
                              line[:80]) from err
        if not isinstance(record, dict):
            raise PromptError("prompts.file", f"line {number} of {path.name} is not a JSON object",
                              record)
        records.append(record)
    return records


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


READERS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def load_prompts(source: PromptSource) -> list[Prompt]:
    """The prompts of a source, `limit` applied; raises PromptError when it cannot be used."""
    loaders = {
        "list": lambda: [Prompt(f"{i:05d}", text) for i, text in enumerate(source.list_ or [])],
        "file": lambda: _from_file(Path(source.file or ""), source.columns),
        "classes": lambda: [
            Prompt(f"{i:05d}", class_label=label) for i, label in enumerate(source.classes or [])
        ],
        "control_images": lambda: _from_folder(Path(source.control_images or ""),
                                               source.control_prompt),
    }
    prompts = loaders[source.kind]()
    if not prompts:
        raise PromptError(f"prompts.{source.kind}", "the prompt source is empty; it needs at "
                          "least one prompt", source.source(source.kind))
    return prompts[: source.limit] if source.limit else prompts


def _from_file(path: Path, columns: ColumnMap) -> list[Prompt]:
    if path.suffix.lower() not in READERS:
        raise PromptError("prompts.file", f"unsupported prompt file type `{path.suffix}`; use "
                          f"{', '.join(READERS)}", str(path))
    if not path.is_file():
        raise PromptError("prompts.file", "prompt file does not exist (paths are relative to "
                          "the job file)", str(path))
    try:
        records = READERS[path.suffix.lower()](path)
    except PromptError:
        raise
    except Exception as err:  # any unreadable file means the same fix
        raise PromptError("prompts.file", f"cannot read {path.name}: {type(err).__name__}: "
                          f"{str(err)[:200]}", str(path)) from err
    if not records:
        raise PromptError("prompts.file", f"{path.name} holds no prompts", str(path))
    prompts = [_from_record(record, i, columns, path.name) for i, record in enumerate(records)]
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.prompt_id not in seen:
            seen.add(prompt.prompt_id)
            continue
        repeated = prompt.prompt_id
        raise PromptError("prompts.columns.id", f"id {repeated!r} appears more than once in "
                          f"{path.name}; ids must be unique", columns.id)
    return prompts


def _from_record(record: dict[str, Any], index: int, columns: ColumnMap, name: str) -> Prompt:
    wanted = {"prompt": columns.prompt if columns.class_label is None else None,
              "negative_prompt": columns.negative_prompt, "id": columns.id,
              "class_label": columns.class_label}
    for field, column in wanted.items():
        if column is not None and column not in record:
            raise PromptError(f"prompts.columns.{field}", f"column `{column}` is missing from "
                              f"{name} (row {index + 1} has: {', '.join(map(str, record))})",
                              column)
    text = record.get(columns.prompt) if columns.prompt in record else ""
    if text is None or not isinstance(text, str):
        raise PromptError("prompts.columns.prompt", f"row {index + 1} of {name} has no text in "
                          f"column `{columns.prompt}`", text)
    negative = record.get(columns.negative_prompt) if columns.negative_prompt else None
    prompt_id = str(record[columns.id]) if columns.id else f"{index:05d}"
    label = record.get(columns.class_label) if columns.class_label else None
    return Prompt(prompt_id, text, None if negative is None else str(negative), label)


def _from_folder(folder: Path, prompt: str) -> list[Prompt]:
    if not folder.is_dir():
        raise PromptError("prompts.control_images", "control image folder does not exist "
                          "(paths are relative to the job file)", str(folder))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise PromptError("prompts.control_images", f"no images ({suffixes}) in the folder",
                          str(folder))
    return [Prompt(p.name, prompt, control_image=str(p)) for p in files]
