"""A suite's files on this machine: downloaded once into `$DARKROOM_CACHE/suites/<suite>/`,
verified by SHA-256 (the published one, or the one `darkroom suites pin` recorded in
`suites/pins.json`), re-hashed only when the file changes. Offline, or when a download fails,
the error names the URL and the path to place the file at. `$DARKROOM_SUITE_MIRROR` (a base URL)
is read instead of the published URLs: `<mirror>/<suite>/<file name>`, for clusters without
internet access."""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from darkroom.platform.errors import UserError
from darkroom.platform.models.names import cache_root
from darkroom.platform.suites.items import Suite, SuiteFile

MIRROR_ENV = "DARKROOM_SUITE_MIRROR"
TIMEOUT_S = 60


class SuiteError(UserError):
    """A suite's file is missing, cannot be downloaded, or is not the published one."""


def suites_dir() -> Path:
    """Where suites are cached."""
    return cache_root() / "suites"


def cached_path(suite: Suite, file: SuiteFile) -> Path:
    """Where one file of a suite is kept."""
    return suites_dir() / suite.name / file.name


def pins() -> dict[str, str]:
    """`<suite>/<file>` -> SHA-256 recorded by `darkroom suites pin`."""
    path = suites_dir() / "pins.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def expected_sha256(suite: Suite, file: SuiteFile) -> str | None:
    """The published SHA-256, else the pinned one, else None."""
    return file.sha256 or pins().get(f"{suite.name}/{file.name}")


def source_url(suite: Suite, file: SuiteFile) -> str:
    """The published URL, or the mirror's copy when `$DARKROOM_SUITE_MIRROR` is set."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{suite.name}/{file.name}" if mirror else file.url


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_sha256(path: Path) -> str:
    """The file's SHA-256, from a note beside it while its size and time are unchanged."""
    note = path.with_name(path.name + ".sha256")
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        stamped, digest = note.read_text().split()
        if stamped == stamp:
            return digest
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    note.write_text(f"{stamp} {digest}\n")
    return digest


def download(url: str, target: Path) -> None:
    """`url` into `target`, written under a temporary name and renamed (never half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, \
                partial.open("wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise SuiteError(f"cannot download {url} ({type(reason).__name__}: {reason})") from err
    partial.replace(target)


def ensure(suite: Suite, file: SuiteFile) -> Path:
    """The file on this machine, downloaded if absent, verified by its SHA-256."""
    path = cached_path(suite, file)
    url = source_url(suite, file)
    expected = expected_sha256(suite, file)
    if expected is None:
        raise SuiteError(
            f"suite `{suite.name}`: the SHA-256 of {file.name} is not known here; run "
            f"`darkroom suites pin {suite.name}` to download it from {url} (or place it at "
            f"{path} first) and record its SHA-256")
    if not path.is_file():
        try:
            download(url, path)
        except SuiteError as err:
            raise SuiteError(f"suite `{suite.name}`: {err}; where there is network, download "
                             f"it and place it at {path} (SHA-256 {expected})") from err
    found = _checked_sha256(path)
    if found != expected:
        raise SuiteError(f"suite `{suite.name}`: {path} has SHA-256 {found}, not the "
                         f"published {expected}: it is another version of {file.name}; "
                         f"delete it to download {url} again")
    return path


def read(suite: Suite, file: SuiteFile) -> bytes:
    """The bytes of a verified file (of its member, for an archive)."""
    path = ensure(suite, file)
    if file.member is None:
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        return archive.read(file.member)


def pin(suite: Suite, given: Path | None = None) -> dict[str, str]:
    """Download each file of the suite that has no published SHA-256 (or take it from `given`:
    the file, or a folder holding the suite's files by name; copied into the cache) and record
    its SHA-256 in pins.json; returns file name -> SHA-256."""
    unpinned = [f for f in suite.files if f.sha256 is None]
    if given is not None and Path(given).is_file() and len(unpinned) > 1:
        raise SuiteError(f"suite `{suite.name}` has {len(unpinned)} files to pin "
                         f"({', '.join(f.name for f in unpinned)}): give --file a folder "
                         "holding them")
    recorded = pins()
    found = {}
    for file in unpinned:
        path = cached_path(suite, file)
        if given is not None:
            source = Path(given) / file.name if Path(given).is_dir() else Path(given)
            if not source.is_file():
                raise SuiteError(f"--file: {source} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(source.read_bytes())
        elif not path.is_file():
            try:
                download(source_url(suite, file), path)
            except SuiteError as err:
                raise SuiteError(f"suite `{suite.name}`: {err}; place the file at {path} "
                                 "(or give --file) and pin again") from err
        found[file.name] = recorded[f"{suite.name}/{file.name}"] = file_sha256(path)
    target = suites_dir() / "pins.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return found


def member_bytes(data: bytes, member: str | None) -> bytes:
    """A local file's bytes, or its member's when it is an archive of the suite's format."""
    if member is None or not zipfile.is_zipfile(io.BytesIO(data)):
        return data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(member)
