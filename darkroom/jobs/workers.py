"""What runs on the workers of a job: prompts -> request rows, and the actor that generates and
writes them. The driver hears back only small tables (counts, file names, error reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from darkroom.jobs import output, resume
from darkroom.jobs.plan import expand_prompts
from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import IMAGE_SCHEMA
from darkroom.platform.errors import UserError

# What the ImageGenerator returns: the image columns, and `error` (null unless the row failed).
OUTPUT_SCHEMA = IMAGE_SCHEMA.append(pa.field("error", pa.string()))
# What the check pass returns per block of prompts (`done_images`: rows already made as images).
CHECK_SCHEMA = pa.schema([("run_id", pa.string()), ("rows", pa.int64()),
                          ("missing", pa.int64()), ("done_images", pa.int64()),
                          ("problem", pa.string())])


def expand_missing(prompts: pa.Table, plan: dict[str, Any], done: list[Any]) -> pa.Table:
    """Ray Data task: a block of prompts -> the request rows not done yet."""
    requests = expand_prompts(prompts, plan)
    missing, _ = resume.split_done(requests, resume.done_rows(done))
    return missing


def check_block(prompts: pa.Table, plan: dict[str, Any], done: list[Any]) -> pa.Table:
    """Ray Data task of the check pass: per run, how many request rows a block of prompts makes
    and how many are missing, and the first done row whose inputs changed (if any)."""
    import pyarrow.compute as pc

    requests = expand_prompts(prompts, plan)
    done_table = resume.done_rows(done)
    missing, already = resume.split_done(requests, done_table)
    problem = resume.input_problem(already, done_table)
    images = done_table.filter(pc.equal(done_table.column("kind"), layout.IMAGES)).column("row_id")
    made = already.filter(pc.is_in(already.column("row_id"), value_set=images))
    out = []
    for run in plan["runs"]:
        run_id = run["run_id"]
        rows = pc.sum(pc.equal(requests.column("run_id"), run_id)).as_py() or 0
        left = pc.sum(pc.equal(missing.column("run_id"), run_id)).as_py() or 0
        done = pc.sum(pc.equal(made.column("run_id"), run_id)).as_py() or 0
        out.append({"run_id": run_id, "rows": rows, "missing": left, "done_images": done,
                    "problem": problem})
        problem = None  # reported once per block
    return pa.Table.from_pylist(out, schema=CHECK_SCHEMA)


class GenerateAndWrite:
    """Ray Data actor: request rows in; images generated, written and committed here, on the
    worker; a few bytes per written file out (`output.FILE_SCHEMA`).

    Each call's rows go to the ImageGenerator `chunk` rows at a time (the job's batch_size) and land
    in one file per run and outcome, so a crash loses at most one call's rows.
    """

    def __init__(self, model: Mapping[str, Any], runtime: Mapping[str, Any], job_dir: str,
                 storage_options: Mapping[str, Any] | None, invocation: str, chunk: int,
                 generator_class: type | None = None, lease_token: str | None = None) -> None:
        storage.set_options(job_dir, dict(storage_options or {}))
        if generator_class is None:  # the real one; benchmarks hand in a fake
            from darkroom.platform.engine.generator import ImageGenerator

            generator_class = ImageGenerator
        self.failure: UserError | None = None
        try:
            self.generator = generator_class(dict(model), runtime=dict(runtime))
        except UserError as err:
            # raised from the first call instead: Ray hands a task's exception to the driver as
            # it is, an actor's creation error only as text (a one-line `error:` then, exit 2)
            self.failure = err
        self.job_dir = storage.location(job_dir)
        self.invocation = invocation
        self.chunk = chunk
        self.lease_token = lease_token

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Generate a call's rows, write them, return what was written."""
        if self.failure is not None:
            raise self.failure
        rows = batch.to_pylist()
        made: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.chunk):
            made += self.generator.generate(rows[start:start + self.chunk])
        table = pa.Table.from_pylist([{c: row.get(c) for c in OUTPUT_SCHEMA.names}
                                      for row in made], schema=OUTPUT_SCHEMA)
        return output.write_call(self.job_dir, table, self.invocation, self.lease_token)
