"""Whether a job could write its folder, asked without writing anything: `darkroom validate` and
`darkroom run` report a problem here as bad input (exit code 2, naming `output`).

Locally: the folder, or the part of its path that exists, is a folder this process may write in.
On a store: there are credentials (S3: where the AWS SDK looks for them), the store accepts them
for a listing of the folder, the bucket exists, and the folder is not a file (an object).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkroom.platform.data import storage
from darkroom.platform.data.retries import StoreUnavailable, retry_seconds, retrying
from darkroom.platform.data.storage import UriPath

PREFLIGHT_RETRY_S = 10.0
BUCKETS = {"s3", "gs", "gcs", "abfs", "abfss"}  # schemes whose first path part is a bucket
NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|RESOURCE_NOT_FOUND|[Bb]ucket .*not found")
REFUSED = re.compile(r"ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
                     r"HTTP status 40[13]|[Ff]orbidden|[Uu]nauthori[sz]ed")
CREDENTIALS_HELP = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), or a role "
          "(IRSA, an instance profile)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or the node's service account",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS or the node's service account",
    "abfs": "AZURE_STORAGE_ACCOUNT_KEY or the node's managed identity",
    "abfss": "AZURE_STORAGE_ACCOUNT_KEY or the node's managed identity",
}


def output_problem(value: str, options: dict[str, Any] | None = None) -> str | None:
    """Why a job could not write under `value` (a folder or a URI), or None when it can."""
    loc = storage.location(value)
    if isinstance(loc, Path):
        return _local_problem(loc)
    find = CREDENTIALS.get(loc.scheme)
    if find is not None and not find(options or {}):
        return (f"no credentials for {loc}: set {CREDENTIALS_HELP[loc.scheme]} in the "
                "environment of every machine that runs the job")
    try:
        return retrying(loc, "checking", lambda: _store_problem(loc, options or {}),
                         budget=min(retry_seconds(), PREFLIGHT_RETRY_S))
    except StoreUnavailable as err:
        return f"cannot reach the store of {loc}: {err}"
    except OSError as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if REFUSED.search(text):
            return (f"the store refused this machine's credentials for {loc} ({text}); check "
                    f"{CREDENTIALS_HELP.get(loc.scheme, 'the credentials')}, and that they may "
                    "list and write the bucket")
        if NO_BUCKET.search(text):  # e.g. asked for its region
            return f"the bucket of {loc} does not exist ({text}): create it, or fix `output`"
        return f"cannot use {loc}: {text}"


def _local_problem(path: Path) -> str | None:
    there = path.absolute()
    while not there.exists() and there.parent != there:
        there = there.parent  # the part of the path that exists: created by the job
    if not there.is_dir():
        return f"{there} is a file, not a folder: give `output` a folder"
    if not os.access(there, os.W_OK | os.X_OK):
        return f"this process may not write in {there}: give `output` a folder it may write in"
    return None


def _store_problem(loc: UriPath, options: dict[str, Any]) -> str | None:
    from pyarrow.fs import FileSelector, FileType

    fs, path = storage.fresh_filesystem(loc, options)
    fs.get_file_info(FileSelector(path, allow_not_found=True))  # the store's word on credentials
    bucket = path.split("/", 1)[0]
    if loc.scheme in BUCKETS and fs.get_file_info(bucket).type == FileType.NotFound:
        return f"the bucket `{bucket}` of {loc} does not exist: create it, or fix `output`"
    if "/" in path and fs.get_file_info(path).type == FileType.File:
        return f"{loc} is a file, not a folder: give `output` a folder"
    return None


def _s3_credentials(options: dict[str, Any]) -> bool:
    """Whether this process has S3 credentials where the AWS SDK looks for them (no request,
    except a short one to an instance's metadata service when nothing else is there)."""
    env = os.environ
    if {"access_key", "anonymous", "role_arn"} & set(options):
        return True
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(name) for name in ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                      "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if any(Path(name).expanduser().is_file() for name in files):
        return True
    return _instance_metadata()


def _instance_metadata() -> bool:
    """Whether an EC2 instance metadata service answers (an instance profile's credentials)."""
    import urllib.request

    if env_flag := os.environ.get("AWS_EC2_METADATA_DISABLED"):
        if env_flag.lower() == "true":
            return False
    request = urllib.request.Request(
        "http://169.254.169.254/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    try:
        urllib.request.urlopen(request, timeout=1).close()
    except OSError:
        return False
    return True


# scheme -> whether credentials are there (schemes not named: the store's answer tells)
CREDENTIALS: dict[str, Callable[[dict[str, Any]], bool]] = {"s3": _s3_credentials}
