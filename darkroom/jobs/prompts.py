"""Prompt sources -> `Prompt`s, each with a stable id, read here on the driver.

Sources: an inline list, a file (.txt one per line, .jsonl, .csv, .parquet with a column mapping),
class labels (DiT), a folder of control images (ControlNet), or a benchmark suite
(`platform.suites`: its published files, cached and verified, or a local file in its format).
Files and folders are local paths or URIs (`platform.storage`). Every way a source can be wrong
(missing, unreadable, empty, a missing column, repeated ids) is a `PromptError` naming the field.

`load_prompts` reads a source whole (`darkroom validate`, small inline sources); a job reads
prompt files on its workers instead (`jobs.stream`), and the driver only `peek_prompts` at the
first rows to check the columns before Ray starts.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from darkroom.jobs.spec import ColumnMap, PromptSource
from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class PromptError(ValueError):
    """A prompt source that cannot be used; `path` is the field of the job file to fix."""

    def __init__(self, path: str, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.path, self.message, self.value = path, message, value

    def __reduce__(self) -> tuple:
        # raised on a worker, it travels back to the driver pickled
        return (PromptError, (self.path, self.message, self.value))


@dataclass(frozen=True)
class Prompt:
    """One prompt of a job: its id and conditioning (text, class, image files)."""

    prompt_id: str
    prompt: str = ""
    negative_prompt: str | None = None  # None: the job's generation.negative_prompt
    class_label: int | str | None = None
    control_image: str | None = None  # path or URI of the control image (ControlNet)
    image: str | None = None  # path or URI of the source image (image editing)
    mask: str | None = None  # path or URI of the mask (inpainting)


def text_lines(data: bytes) -> list[str]:
    """A text file's lines: split at newlines only, as Ray's `read_text` splits them (not at
    U+2028, U+0085 and the other breaks `str.splitlines` knows, which may sit inside a JSON
    string)."""
    return [line.removesuffix("\r") for line in data.decode("utf-8").split("\n")]


def checked_line(line: str, where: str) -> str:
    """A line of a prompt file, refused when it is longer than any prompt could be."""
    if len(line) > MAX_LINE_CHARS and len(line.encode()) > MAX_LINE_BYTES:
        raise PromptError("prompts.file", f"{where} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                          "a prompt line holds a prompt (a few hundred characters), not a "
                          "document", line[:80])
    return line


def _read_txt(data: bytes, name: str) -> list[dict[str, Any]]:
    lines = [checked_line(line, f"line {number} of {name}")
             for number, line in enumerate(text_lines(data), start=1)]
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def _read_jsonl(data: bytes, name: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text_lines(data), start=1):
        if not line.strip():
            continue
        where = f"line {number} of {name}"
        records.append(json_record(checked_line(line, where), where))
    return records


def json_record(line: str, where: str) -> dict[str, Any]:
    """One line of a .jsonl prompt file as a JSON object; `where` names the line in errors."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptError("prompts.file", f"{where} is not JSON: {err}", line[:80]) from err
    if not isinstance(record, dict):
        raise PromptError("prompts.file", f"{where} is not a JSON object", line[:80])
    return record


def _read_csv(data: bytes, name: str) -> list[dict[str, Any]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def _read_parquet(data: bytes, name: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pylist()


READERS: dict[str, Callable[[bytes, str], list[dict[str, Any]]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}
PEEK_ROWS = 1000
MAX_LINE_BYTES = 1 << 20  # one line of a .txt/.jsonl/.csv prompt file
MAX_LINE_CHARS = MAX_LINE_BYTES // 4  # shorter lines cannot be longer in UTF-8
PEEK_BYTES = MAX_LINE_BYTES + 1  # the first rows, and always at least one whole line


def load_prompts(source: PromptSource) -> list[Prompt]:
    """The prompts of a source, `limit` applied; raises PromptError when it cannot be used."""
    loaders = {
        "list": lambda: [Prompt(f"{i:05d}", text) for i, text in enumerate(source.list_ or [])],
        "file": lambda: _from_file(storage.location(source.file or ""), source.columns),
        "classes": lambda: [
            Prompt(f"{i:05d}", class_label=label) for i, label in enumerate(source.classes or [])
        ],
        "control_images": lambda: _from_folder(storage.location(source.control_images or ""),
                                               source.control_prompt),
        "images": lambda: _from_image_folder(source),
        "suite": lambda: suite_prompts(source),
    }
    prompts = loaders[source.kind]()
    if not prompts:
        raise PromptError(f"prompts.{source.kind}", "the prompt source is empty; it needs at "
                          "least one prompt", source.source(source.kind))
    return prompts[: source.limit] if source.limit else prompts


def suite_prompts(source: PromptSource) -> list[Prompt]:
    """A suite's prompts, numbered by position (`00000`, ...) as evaluation numbers them when
    it reads their skills and questions back."""
    from darkroom.platform.suites import SuiteError, items

    def read(path) -> bytes:
        return storage.read_bytes(storage.location(str(path)))

    try:
        found = items(source.suite or "", source.file, read)
    except (SuiteError, OSError) as err:
        raise PromptError("prompts.suite", str(err), source.suite) from err
    return [Prompt(f"{i:05d}", item.prompt) for i, item in enumerate(found)]


def _from_file(path: Location, columns: ColumnMap, peek: bool = False) -> list[Prompt]:
    data = _file_bytes(path, PEEK_BYTES if peek else None)
    records = _parse(path, data)
    if peek and path.suffix.lower() != ".parquet":
        records = records[:PEEK_ROWS]
    return _prompts_of(records, columns, path.name, str(path.parent))


def _file_bytes(path: Location, limit: int | None) -> bytes:
    """The file's bytes (at most `limit`, cut after the last whole line; a Parquet file is
    read whole unless `limit`, then only its first rows are kept), after the checks."""
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise PromptError("prompts.file", f"unsupported prompt file type `{path.suffix}`; use "
                          f"{', '.join(READERS)}", str(path))
    try:
        found = storage.is_file(path)
    except Exception as err:  # an unreachable store, missing credentials
        raise PromptError("prompts.file", f"cannot reach {path}: {type(err).__name__}: "
                          f"{str(err)[:200]}", str(path)) from err
    if not found:
        raise PromptError("prompts.file", "prompt file does not exist (paths are relative to "
                          "the job file)", str(path))
    try:
        if limit is None:
            return storage.read_bytes(path)
        if suffix == ".parquet":
            return _first_parquet_rows(path)
        fs, inner = storage.filesystem(path)
        with fs.open_input_stream(inner) as stream:
            data = stream.read(limit)
        if len(data) < limit:
            return data
        if b"\n" not in data[:MAX_LINE_BYTES + 1]:
            checked_line(data.decode("utf-8", errors="replace"), f"line 1 of {path.name}")
        return data[: data.rfind(b"\n") + 1]
    except Exception as err:
        raise PromptError("prompts.file", f"cannot read {path.name}: {type(err).__name__}: "
                          f"{str(err)[:200]}", str(path)) from err


def _first_parquet_rows(path: Location) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(path)
    with fs.open_input_file(inner) as handle:
        first = next(pq.ParquetFile(handle).iter_batches(batch_size=PEEK_ROWS), None)
    sink = pa.BufferOutputStream()
    if first is not None:
        pq.write_table(pa.Table.from_batches([first]), sink)
    return sink.getvalue().to_pybytes()


def _parse(path: Location, data: bytes) -> list[dict[str, Any]]:
    try:
        records = READERS[path.suffix.lower()](data, path.name) if data else []
    except PromptError:
        raise
    except Exception as err:  # any unreadable file means the same fix
        raise PromptError("prompts.file", f"cannot read {path.name}: {type(err).__name__}: "
                          f"{str(err)[:200]}", str(path)) from err
    if not records:
        raise PromptError("prompts.file", f"{path.name} holds no prompts", str(path))
    return records


def _prompts_of(records: list[dict[str, Any]], columns: ColumnMap, name: str,
                base: str | None = None) -> list[Prompt]:
    prompts = [prompt_of_record(record, i, columns, name, base)
               for i, record in enumerate(records)]
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.prompt_id not in seen:
            seen.add(prompt.prompt_id)
            continue
        repeated = prompt.prompt_id
        raise PromptError("prompts.columns.id", f"id {repeated!r} appears more than once in "
                          f"{name}; ids must be unique", columns.id)
    return prompts


def peek_prompts(source: PromptSource) -> list[Prompt]:
    """What the driver checks before a job starts: a file's first rows (up to PEEK_ROWS; the
    workers read and check the rest), or an inline source whole."""
    if source.kind != "file":
        return load_prompts(source)
    prompts = _from_file(storage.location(source.file or ""), source.columns, peek=True)
    return prompts[: source.limit] if source.limit else prompts


def count_prompts(source: PromptSource) -> int:
    """How many prompts a source gives (`limit` applied), reading a file in pieces (a Parquet
    file's footer only) rather than whole: for plans and dry runs."""
    if source.kind != "file":
        return len(load_prompts(source))
    path = storage.location(source.file or "")
    _file_bytes(path, 1)  # the checks, with their messages
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        fs, inner = storage.filesystem(path)
        with fs.open_input_file(inner) as handle:
            count = pq.ParquetFile(handle).metadata.num_rows
    else:
        count = sum(1 for _ in _records_of_lines(path))
    return min(count, source.limit) if source.limit else count


def _records_of_lines(path: Location) -> Iterator[None]:
    """One item per prompt of a .txt/.jsonl/.csv file, streamed (csv: after its header)."""
    fs, inner = storage.filesystem(path)
    with fs.open_input_stream(inner) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        if path.suffix.lower() == ".csv":
            reader = csv.reader(text)
            next(reader, None)
            yield from (None for row in reader if row)
        else:
            yield from (None for line in text if line.strip())


def prompt_of_record(record: dict[str, Any], index: int, columns: ColumnMap, name: str,
                     base: str | None = None) -> Prompt:
    """Row `index` (from 0) of a prompt file, read through the job's column mapping; image
    paths are relative to `base`, the prompt file's folder."""
    wanted = {"prompt": columns.prompt if columns.class_label is None else None,
              "negative_prompt": columns.negative_prompt, "id": columns.id,
              "class_label": columns.class_label, "image": columns.image, "mask": columns.mask}
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
    image = _image_path(record, "image", columns.image, index, name, base)
    mask = _image_path(record, "mask", columns.mask, index, name, base)
    return Prompt(prompt_id, text, None if negative is None else str(negative), label,
                  image=image, mask=mask)


def _image_path(record: dict[str, Any], role: str, column: str | None, index: int, name: str,
                base: str | None) -> str | None:
    """A record's image path or URI; a relative path is relative to the prompt file."""
    if column is None:
        return None
    value = record.get(column)
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"prompts.columns.{role}", f"row {index + 1} of {name} has no "
                          f"{role} path in column `{column}`", value)
    if base is None or re.match(r"^[a-z0-9]+://", value) or value.startswith("/"):
        return value
    return str(storage.location(base) / value)


def _from_folder(folder: Location, prompt: str, field: str = "prompts.control_images"
                 ) -> list[Prompt]:
    if not storage.exists(folder):
        raise PromptError(field, "the image folder does not exist (paths are relative to the "
                          "job file)", str(folder))
    entries = storage.list_dir(folder)
    files = [e.loc for e in entries if not e.is_dir and e.loc.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise PromptError(field, f"no images ({suffixes}) in the folder", str(folder))
    return [Prompt(p.name, prompt, control_image=str(p)) for p in sorted(files,
                                                                         key=lambda f: f.name)]


def _from_image_folder(source: PromptSource) -> list[Prompt]:
    """`prompts.images` (and `masks`): each image one prompt, the instruction its text."""
    images = _from_folder(storage.location(source.images or ""), source.instruction,
                          field="prompts.images")
    masks = {}
    if source.masks:
        masks = {p.prompt_id: p.control_image for p in _from_folder(
            storage.location(source.masks), "", field="prompts.masks")}
        missing = [p.prompt_id for p in images if p.prompt_id not in masks]
        if missing:
            raise PromptError("prompts.masks", f"no mask for {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}: each image needs a mask of "
                              "the same file name", source.masks)
    return [Prompt(p.prompt_id, p.prompt, image=p.control_image, mask=masks.get(p.prompt_id))
            for p in images]
