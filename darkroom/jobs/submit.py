"""`darkroom submit`: send a job file to a Ray cluster through the Ray Jobs API.

The job file is validated here first (no point queueing a typo). It travels in a runtime
environment's `working_dir` together with copies of its prompt file or control-image folder; on the
cluster the entrypoint is `python -m darkroom run job.yaml`, which joins the cluster through the
RAY_ADDRESS that Ray Jobs sets.

Ray 2.60 `ray start` turns on token authentication by default: the client sends the cluster's
token (`platform.cluster.read_token`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from darkroom.jobs.jobfile import load
from darkroom.platform.cluster import TOKEN_HELP, read_token
from darkroom.platform.data import storage
from darkroom.platform.errors import UserError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Ray Jobs runs the entrypoint with the PATH the cluster was started with, whose `python` may
# not be the one Darkroom is installed in (a venv that was not activated): use $DARKROOM_PYTHON
# when given, else `python`, and say so plainly when that cannot import darkroom.
ENTRYPOINT = (
    'py="${DARKROOM_PYTHON:-python}"; '
    'if ! "$py" -c "import darkroom" 2>/dev/null; then '
    'echo "error: the cluster\'s Python ($py, from the PATH Ray was started with) cannot '
    'import darkroom: start the cluster from the environment Darkroom is installed in '
    '(e.g. source .venv/bin/activate before ray start), or submit with '
    '--env DARKROOM_PYTHON=/path/to/that/python" >&2; exit 1; fi; '
    'exec "$py" -m darkroom run job.yaml'
)


def dashboard_address(address: str | None) -> str:
    """The Ray dashboard URL: --address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS."""
    address = (address or os.environ.get("RAY_API_SERVER_ADDRESS")
               or os.environ.get("RAY_ADDRESS"))
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard "
                        "port) or set RAY_API_SERVER_ADDRESS")
    return address if "://" in address else f"http://{address}"


def client_for(address: str | None) -> Any:
    """A JobSubmissionClient for the cluster, sending the auth token when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = dashboard_address(address)
    token = read_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        raise UserError(f"{address} refused the request ({str(err).splitlines()[0]}); "
                        f"{TOKEN_HELP}") from err
    except ConnectionError as err:
        raise UserError(
            f"cannot reach the Ray dashboard at {address}: is the cluster up, and is this its "
            "dashboard port (8265 by default, not the GCS port 6379)?"
        ) from err


def job_info(client: Any, job_id: str) -> Any:
    """A submitted job's details; an unknown id is a user error, not a crash."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:
        if "404" in str(err):
            raise UserError(f"no job `{job_id}` on {client.get_address()}; `ray job list --address "
                            f"{client.get_address()}` lists the cluster's jobs") from err
        raise


def stage(job_path: str | Path, overrides: Sequence[str], folder: Path) -> dict[str, Any]:
    """Write the validated job and copies of its inputs into `folder`; returns the job data.
    Whether the output can be written is the cluster's to say (its credentials, its mounts):
    the job's `darkroom run` checks it there before anything starts."""
    spec = load(job_path, overrides, reach=False)
    output = storage.location(spec.output)
    if isinstance(output, Path) and not Path(spec.output).expanduser().is_absolute():
        raise UserError(
            f"`output` is the relative path {spec.output!r}; on a cluster it would land in the "
            "job's temporary working folder. Give a bucket URI or an absolute path on storage "
            "every node mounts, e.g. `darkroom submit JOB output=s3://bucket/outputs` or "
            "`output=/mnt/data/outputs`"
        )
    data = spec.dump()
    prompts = data["prompts"]
    # inputs on object storage are read from there by the cluster; local ones travel along
    if spec.prompts.file and storage.is_local(storage.location(spec.prompts.file)):
        target = folder / "inputs" / Path(spec.prompts.file).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(storage.location(spec.prompts.file), target)
        prompts["file"] = str(target.relative_to(folder))
    for key in ("control_images", "images", "masks"):  # folders of input images
        value = getattr(spec.prompts, key)
        if value and storage.is_local(storage.location(value)):
            shutil.copytree(storage.location(value), folder / "inputs" / key)
            prompts[key] = f"inputs/{key}"
    (folder / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def submit(job_path: str | Path, overrides: Sequence[str], address: str | None,
           env: Sequence[str] = (), ship_package: bool = False) -> tuple[str, Any]:
    """Validate, stage and submit a job; returns (submission id, client)."""
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env takes KEY=VALUE, got {item!r}")
        env_vars[key] = value
    folder = Path(tempfile.mkdtemp(prefix="darkroom-submit-"))
    try:
        data = stage(job_path, overrides, folder)
        client = client_for(address)
        runtime_env: dict[str, Any] = {"working_dir": str(folder), "env_vars": env_vars}
        if ship_package:
            runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
        job_id = client.submit_job(
            entrypoint=ENTRYPOINT,
            runtime_env=runtime_env,
            submission_id=f"darkroom-{data['name']}-{uuid.uuid4().hex[:8]}",
            metadata={"darkroom_job": data["name"]},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # uploaded by now
    return job_id, client


def follow(client: Any, job_id: str) -> int:
    """Stream a job's logs until it ends; 0 if it succeeded, 1 otherwise."""

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(stream())
    status = client.get_job_status(job_id)
    while status.value not in TERMINAL:  # the log stream can close just before the status flips
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"{job_id}: {status.value}")
    return 0 if status.value == "SUCCEEDED" else 1
