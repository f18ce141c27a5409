"""Helpers of the jobs tests: slow-enough jobs, watching an output folder, finding our actors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from darkroom.platform import layout

GENERATOR_TITLE = "MapBatches(Generator)"


def fault_job(tmp_path: Path, name: str, prompts: int = 16, **changes) -> dict:
    """A job slow enough on tiny models to be interrupted: many small checkpoints."""
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt {i}" for i in range(prompts)) + "\n")
    job = {
        "name": name,
        "output": str(tmp_path / "out"),
        "prompts": {"file": "prompts.txt", "images_per_prompt": 4},
        "models": [{"model": "tiny:sd"}],
        "sweep": {"sampler": ["ddim"], "steps": [8]},
        "generation": {"width": 64, "height": 64, "batch_size": 4},
        "compute": {"actors": {"min": 1, "max": 1}, "checkpoint_rows": 4,
                    "max_restarts": 2, "max_task_retries": 2},
        "runtime": {"device": "cpu"},
    }
    job.update(changes)
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    return job


def finished_files(job_dir: Path) -> list[Path]:
    return [f for run in layout.run_dirs(job_dir) for f in
            layout.parquet_files(run / layout.IMAGES)]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def generator_actors() -> list[psutil.Process]:
    """Generator actor processes of this test session's Ray (descendants of this process)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if GENERATOR_TITLE in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def helpers():
    """The helpers above, for test modules (importlib import mode has no conftest imports)."""
    import types

    return types.SimpleNamespace(fault_job=fault_job, finished_files=finished_files,
                                 wait_for=wait_for, generator_actors=generator_actors)
