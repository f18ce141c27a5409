"""Prompt sources as Ray data: a prompt file is read and checked on the workers, never whole on
the driver, which holds only references to the blocks and their row counts.

1. Ray Data reads the file (`.parquet`, `.jsonl`, `.csv`, `.txt`; local or a URI), one row per
   prompt, and `limit` keeps the first ones. Order is preserved, so a prompt's row number is
   the same on every read.
2. A task per block turns its rows into PROMPT_COLUMNS (`parse_block`), every row checked (a
   missing column, a row without text, a line that is not JSON is a `PromptError` naming the
   field), and prompts without an id column get their row number as id (`00000`, ...) from the
   block's offset. (Plain tasks: a PromptError raised in one reaches the driver as it is.)
3. With an id column, one task over the id columns finds an id given twice.

Inline sources (a list, classes, a folder of control images) are small and come from the job
file or a folder listing: they are made on the driver and put into the object store as they are.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from darkroom.jobs.plan import PROMPT_COLUMNS, prompts_table
from darkroom.jobs.prompts import (
    PromptError,
    checked_line,
    json_record,
    load_prompts,
    prompt_of_record,
    text_lines,
)
from darkroom.jobs.spec import ColumnMap, PromptSource
from darkroom.platform.data import storage
from darkroom.platform.errors import cause_of_kind

PROMPT_SCHEMA = pa.schema([(name, pa.string()) for name in PROMPT_COLUMNS])
READ_BLOCKS = 16  # blocks a prompt file is read in, at least: the expansion's parallelism
PROMPTS_PER_BLOCK = 10_000
MIN_BLOCK_ROWS = 1000  # a small file is not cut finer than this


@dataclass
class Prompts:
    """A job's prompts in the object store: block references (in prompt order), rows of each."""

    blocks: list[Any]
    counts: list[int]

    @property
    def count(self) -> int:
        """How many prompts."""
        return sum(self.counts)

    def dataset(self) -> Any:
        """The prompts as a Ray dataset (the blocks already exist: nothing is read again)."""
        import ray.data

        return ray.data.from_arrow_refs(self.blocks)

    def split(self, rows: int) -> Prompts:
        """The same prompts in blocks of at most `rows` (sliced by tasks on the workers)."""
        import ray

        slicer = ray.remote(slice_block)
        blocks, counts = [], []
        for block, count in zip(self.blocks, self.counts, strict=True):
            parts = [min(rows, count - start) for start in range(0, count, rows)]
            if len(parts) <= 1:
                blocks.append(block)
                counts.append(count)
                continue
            sliced = slicer.options(num_returns=len(parts)).remote(block, rows)
            blocks += sliced
            counts += parts
        return Prompts(blocks, counts)


def open_prompts(source: PromptSource) -> Prompts:
    """Read a prompt source into the object store (Ray must be up); PromptError when a row or
    the file cannot be used."""
    import ray

    if source.kind != "file":
        table = prompts_table(load_prompts(source)).cast(PROMPT_SCHEMA)
        return Prompts([ray.put(table)], [table.num_rows])
    path = storage.location(source.file or "")
    try:
        refs, counts = _read(source, path)
    except Exception as err:
        raise as_prompt_error(err, path.name) from err
    counts = list(counts)
    if not sum(counts):
        raise PromptError("prompts.file", f"{path.name} holds no prompts", str(path))
    parse = ray.remote(parse_block)
    offsets = [0, *itertools.accumulate(counts)][:-1]
    options = {"suffix": path.suffix.lower(), "columns": source.columns.model_dump(),
               "name": path.name, "base": str(path.parent)}
    refs = [parse.remote(ref, offset, **options) for ref, offset in zip(refs, offsets,
                                                                         strict=True)]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    for ref in refs:  # a bad row: its PromptError, raised here
        try:
            ray.get(ray.remote(_num_rows).remote(ref))
        except Exception as err:
            raise as_prompt_error(err, path.name) from err
    if source.columns.id is not None:
        repeated = ray.get(ray.remote(first_repeated_id).remote(*refs))
        if repeated is not None:
            raise PromptError("prompts.columns.id", f"id {repeated!r} appears more than once in "
                              f"{path.name}; ids must be unique", source.columns.id)
    # blocks of at most PROMPTS_PER_BLOCK: the check pass runs a task per block
    return Prompts(refs, counts).split(PROMPTS_PER_BLOCK)


def _read(source: PromptSource, path: storage.Location) -> tuple[list[Any], list[int]]:
    import ray.data

    fs, inner = storage.filesystem(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        wanted = [c for c in (source.columns.prompt, source.columns.negative_prompt,
                              source.columns.id, source.columns.class_label) if c]
        present = set(_parquet_columns(fs, inner))
        ds = ray.data.read_parquet(inner, filesystem=fs, columns=[c for c in wanted
                                                                  if c in present],
                                   override_num_blocks=READ_BLOCKS)
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        # every column as text, as Python's csv module reads it (ids like 007 stay 007)
        header = _csv_header(fs, inner)
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                       strings_can_be_null=False,
                                       quoted_strings_can_be_null=False)
        ds = ray.data.read_csv(inner, filesystem=fs, convert_options=convert,
                               override_num_blocks=READ_BLOCKS)
    else:  # .txt and .jsonl: one row per non-empty line, split at newlines only
        ds = ray.data.read_binary_files(inner, filesystem=fs).map_batches(
            _lines, batch_format="pyarrow", batch_size=None)
    ds.context.execution_options.preserve_order = True  # row numbers are prompt ids
    if source.limit:
        ds = ds.limit(source.limit)
    import ray

    refs = ds.materialize().to_arrow_refs()  # the blocks stay in the object store
    count = ray.remote(_num_rows)
    counts = ray.get([count.remote(ref) for ref in refs])
    if suffix in (".txt", ".jsonl"):  # read whole: cut into READ_BLOCKS pieces to parse
        rows = max(MIN_BLOCK_ROWS, math.ceil(sum(counts) / READ_BLOCKS))
        cut = Prompts(refs, counts).split(rows)
        refs, counts = cut.blocks, cut.counts
    return refs, counts


def _lines(files: pa.Table) -> pa.Table:
    """Task: whole text files -> their non-empty lines (not Ray's `read_text`, which splits at
    U+2028 and the other breaks `str.splitlines` knows, even inside a JSON string)."""
    lines = [line for data in files.column("bytes").to_pylist() for line in text_lines(data)
             if line.strip()]
    return pa.table({"text": pa.array(lines, pa.string())})


def _num_rows(block: pa.Table) -> int:
    return block.num_rows


def _parquet_columns(fs: Any, inner: str) -> list[str]:
    import pyarrow.parquet as pq

    with fs.open_input_file(inner) as handle:
        return pq.ParquetFile(handle).schema_arrow.names


def _csv_header(fs: Any, inner: str) -> list[str]:
    import csv
    import io

    with fs.open_input_stream(inner) as stream:
        head = stream.read(1 << 16).decode("utf-8", errors="replace")
    return next(csv.reader(io.StringIO(head)), [])


def parse_block(block: pa.Table, offset: int, suffix: str, columns: dict[str, Any],
                name: str, base: str | None = None) -> pa.Table:
    """Task: raw rows of a prompt file, the first of them row `offset` of the file ->
    PROMPT_COLUMNS; a row that cannot be a prompt raises PromptError."""
    mapping = ColumnMap.model_validate(columns)
    if suffix == ".txt":
        texts = [checked_line(line, f"a line of {name}").strip()
                 for line in block.column("text").to_pylist()]
        records = [{"prompt": text} for text in texts if text]
        mapping = ColumnMap()
    elif suffix == ".jsonl":
        lines = block.column("text").to_pylist()
        records = [json_record(checked_line(line, f"a line of {name}"), f"a line of {name}")
                   for line in lines if line.strip()]
    else:
        records = block.to_pylist()
    # numbered as `load_prompts` numbers them, so ids without an id column agree
    return prompts_table([prompt_of_record(record, index, mapping, name, base)
                          for index, record in enumerate(records, start=offset)])


def slice_block(block: pa.Table, rows: int) -> list[pa.Table]:
    """Task: a block cut into pieces of `rows` rows (the last one shorter)."""
    return [block.slice(start, rows) for start in range(0, block.num_rows, rows)]


def first_repeated_id(*blocks: pa.Table) -> str | None:
    """Task: an id that appears more than once over all blocks, or None."""
    import pyarrow.compute as pc

    if not blocks:
        return None
    ids = pa.concat_arrays([b.column("prompt_id").combine_chunks() for b in blocks])
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py() if len(repeated) else None


def as_prompt_error(err: BaseException, name: str) -> PromptError:
    """The PromptError behind a failed Ray task, or one saying the file cannot be read."""
    found = cause_of_kind(err, PromptError)
    if found is not None:
        return found
    return PromptError("prompts.file", f"cannot read {name}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0][:200] if str(err) else ''}", name)
