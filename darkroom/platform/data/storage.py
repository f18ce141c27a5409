"""Where files live: local folders and object stores, through pyarrow filesystems.

A location is a `pathlib.Path` (local) or a `UriPath` (`s3://bucket/key`, `gs://bucket/key`,
`abfs://container@account.dfs.core.windows.net/key`, or any installed fsspec protocol). `file://`
URIs and plain paths are local. Every function here takes either kind, so writers and readers have
one code path for both.

Credentials and endpoints come from the standard environment of each process (for S3:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, or the
instance's role). Options a job file gives (`storage_options`) are registered per URI prefix with
`set_options` in every process that touches the store (the driver and each worker), and passed
to the filesystem's constructor. Nothing secret is pickled: workers rebuild their filesystems from
the URI, the options and their own environment.

Object stores have no atomic rename, and an object appears whole or not at all: `write_bytes`
is one PUT there. Locally it is a write under a staging name and a rename, so text files (run.json,
timing.json, commit markers) are never seen half written on either kind of store.

A store answers errors that are about the moment, not the file (503 SlowDown, a dropped
connection, an internal error): every operation on a remote location is tried again through those
(`retries`), and then fails with `StoreUnavailable`. Errors about the request (no such file or
bucket, refused credentials) fail at once.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# StoreUnavailable ends every operation here that the store kept failing: named from here too
from darkroom.platform.data.retries import RETRY_ENV as RETRY_ENV
from darkroom.platform.data.retries import StoreUnavailable as StoreUnavailable
from darkroom.platform.data.retries import retrying

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# scheme -> (pyarrow module that must import, what to install when it does not)
PYARROW_SCHEMES = {
    "s3": ("pyarrow._s3fs", "a pyarrow built with S3 support (the PyPI wheels are)"),
    "gs": ("pyarrow._gcsfs", "a pyarrow built with GCS support (the PyPI wheels are)"),
    "gcs": ("pyarrow._gcsfs", "a pyarrow built with GCS support (the PyPI wheels are)"),
    "abfs": ("pyarrow._azurefs", "a pyarrow built with Azure support (the PyPI wheels are)"),
    "abfss": ("pyarrow._azurefs", "a pyarrow built with Azure support (the PyPI wheels are)"),
    "hdfs": ("pyarrow._hdfs", "a pyarrow built with HDFS support and libhdfs"),
}


class StorageError(ValueError):
    """A location that cannot be used: an unknown scheme, a missing library, bad options."""


class UriPath:
    """A location on an object store or remote filesystem, written as a URI.

    Just enough of `pathlib.PurePath` for the layout code: `/`, `name`, `stem`, `suffix`,
    `parent`, `with_name`, ordering and equality by the URI text.
    """

    __slots__ = ("uri",)

    def __init__(self, uri: str) -> None:
        scheme, rest = uri.split("://", 1)
        self.uri = f"{scheme.lower()}://{rest.rstrip('/')}"

    @property
    def scheme(self) -> str:
        """`s3`, `gs`, ...: the part before `://`."""
        return self.uri.split("://", 1)[0]

    def __truediv__(self, part: str | os.PathLike) -> UriPath:
        return UriPath(f"{self.uri}/{str(part).strip('/')}")

    @property
    def name(self) -> str:
        """The last part of the path (empty for a bare bucket)."""
        rest = self.uri.split("://", 1)[1]
        return rest.rsplit("/", 1)[1] if "/" in rest else ""

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        return self.name.rsplit(".", 1)[0] if "." in self.name[1:] else self.name

    @property
    def suffix(self) -> str:
        """The name's last suffix (`.parquet`), or ''."""
        return "." + self.name.rsplit(".", 1)[1] if "." in self.name[1:] else ""

    @property
    def parent(self) -> UriPath:
        """The location one level up (a bucket is its own parent)."""
        scheme, rest = self.uri.split("://", 1)
        return UriPath(f"{scheme}://{rest.rsplit('/', 1)[0]}") if "/" in rest else self

    def with_name(self, name: str) -> UriPath:
        """The same folder, another name."""
        return self.parent / name

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UriPath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and other.uri == self.uri

    def __lt__(self, other: UriPath) -> bool:
        return self.uri < other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self) -> tuple:
        return (UriPath, (self.uri,))


Location = Path | UriPath


def location(value: str | os.PathLike | UriPath) -> Location:
    """A location from what a user wrote: a path, `file://...`, or another URI."""
    if isinstance(value, UriPath):
        return value
    if isinstance(value, Path):
        return value
    text = os.fspath(value)
    match = URI.match(text)
    if not match:
        return Path(text).expanduser()
    if match.group(1).lower() == "file":
        return Path(urlsplit(text).path)
    return UriPath(text)


def is_local(loc: Location) -> bool:
    """True for a local path."""
    return isinstance(loc, Path)


# -- filesystems ------------------------------------------------------------------------------

_OPTIONS: dict[str, tuple[tuple[str, Any], ...]] = {}


def set_options(prefix: str | Location, options: dict[str, Any] | None) -> None:
    """Use these filesystem options (`storage_options` of a job) for locations under `prefix`."""
    loc = location(prefix) if not isinstance(prefix, Path | UriPath) else prefix
    if isinstance(loc, UriPath) and options:
        _OPTIONS[loc.uri] = tuple(sorted(options.items()))


def registered() -> dict[str, dict[str, Any]]:
    """Every prefix's options, to hand to the workers of a pass (`register`)."""
    return {prefix: dict(options) for prefix, options in _OPTIONS.items()}


def register(options_by_prefix: dict[str, dict[str, Any]] | None) -> None:
    """Options from `registered()` in another process."""
    for prefix, options in (options_by_prefix or {}).items():
        set_options(prefix, options)


def _options_for(loc: UriPath) -> tuple[tuple[str, Any], ...]:
    best = ""
    for prefix in _OPTIONS:
        if (loc.uri == prefix or loc.uri.startswith(prefix + "/")) and len(prefix) > len(best):
            best = prefix
    return _OPTIONS.get(best, ())


def filesystem(loc: Location) -> tuple[Any, str]:
    """(pyarrow filesystem, path within it) for a location."""
    if isinstance(loc, Path):
        from pyarrow.fs import LocalFileSystem

        return LocalFileSystem(), str(loc.absolute())
    fs = _filesystem(loc.scheme, urlsplit(loc.uri).netloc, _options_for(loc))
    return fs, _path_in(loc)


def fresh_filesystem(loc: UriPath, options: dict[str, Any]) -> tuple[Any, str]:
    """(filesystem, path) for a remote location built now, from these options and this
    process's environment as they are (not the cached one every other call uses)."""
    netloc = urlsplit(loc.uri).netloc
    return _construct(loc.scheme, netloc, dict(options), resolve_region=True), _path_in(loc)


def _path_in(loc: UriPath) -> str:
    """A remote location's path within its filesystem."""
    split = urlsplit(loc.uri)
    if loc.scheme in ("abfs", "abfss"):
        container = split.netloc.split("@", 1)[0]
        return f"{container}{split.path}".rstrip("/")
    return f"{split.netloc}{split.path}".rstrip("/")


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str, options: tuple[tuple[str, Any], ...]) -> Any:
    """One filesystem per store and options in each process (they hold connection pools)."""
    return _construct(scheme, netloc, dict(options), resolve_region=True)


def _construct(scheme: str, netloc: str, kwargs: dict[str, Any], resolve_region: bool) -> Any:
    if scheme not in PYARROW_SCHEMES:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(_fsspec_class(scheme)(**kwargs)))
    _require(scheme)
    import pyarrow.fs as pafs

    if scheme == "s3":
        kwargs = {**_s3_from_env(), **kwargs}
        if resolve_region and "region" not in kwargs and "endpoint_override" not in kwargs:
            # no region known: from_uri asks the bucket for it (one request)
            return pafs.FileSystem.from_uri(f"s3://{netloc}/")[0]
        return pafs.S3FileSystem(**kwargs)
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(**kwargs)
    if scheme in ("abfs", "abfss"):
        account = netloc.split("@", 1)[1].split(".", 1)[0] if "@" in netloc else None
        return pafs.AzureFileSystem(**({"account_name": account} if account else {}), **kwargs)
    return pafs.HadoopFileSystem(**{"host": netloc, **kwargs})


def _s3_from_env() -> dict[str, str]:
    """The endpoint (AWS_ENDPOINT_URL[_S3]) and region (AWS_REGION, AWS_DEFAULT_REGION) of the
    standard environment, which `S3FileSystem(...)` itself does not read."""
    found = {}
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url:
        split = urlsplit(url if "://" in url else f"https://{url}")
        found.update(endpoint_override=split.netloc, scheme=split.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        found["region"] = region
    return found


def _require(scheme: str) -> None:
    module, what = PYARROW_SCHEMES[scheme]
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise StorageError(f"`{scheme}://` needs {what}; this pyarrow lacks it ({err})") from err


def _fsspec_class(scheme: str) -> type:
    try:
        import fsspec
    except ImportError as err:
        raise StorageError(f"`{scheme}://` is not a pyarrow filesystem; it needs fsspec and its "
                           f"`{scheme}` implementation: pip install fsspec") from err
    try:
        return fsspec.get_filesystem_class(scheme)
    except ValueError as err:
        raise StorageError(f"unknown storage scheme `{scheme}://`; use a local path, s3://, "
                           "gs://, abfs:// or an installed fsspec protocol") from err
    except ImportError as err:
        raise StorageError(f"`{scheme}://` needs a library that is not installed: {err}") from err


def check(value: str, options: dict[str, Any] | None = None) -> str | None:
    """Why `value` cannot be used as a location with these options, or None when it can.

    Builds the filesystem without sending a request: an unknown scheme, a missing library or an
    option the filesystem does not take is reported here, before any work starts.
    """
    loc = location(value)
    if isinstance(loc, Path):
        return None
    split = urlsplit(loc.uri)
    if not split.netloc:
        return f"`{value}` names no bucket or host: write {loc.scheme}://BUCKET/PREFIX"
    try:
        _construct(loc.scheme, split.netloc, dict(options or {}), resolve_region=False)
    except StorageError as err:
        return str(err)
    except (TypeError, ValueError) as err:
        return f"storage options {sorted(options or {})} do not fit `{loc.scheme}://`: {err}"
    except OSError as err:  # e.g. no credentials where the constructor needs them
        return f"cannot use `{value}`: {err}"
    return None


# -- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One listed file or folder."""

    loc: Location
    is_dir: bool
    size: int | None
    mtime: float | None  # seconds since the epoch


def exists(loc: Location) -> bool:
    """Whether a file or folder is there (on an object store: an object or a prefix)."""
    if isinstance(loc, Path):
        return loc.exists()
    from pyarrow.fs import FileType

    fs, path = filesystem(loc)
    return retrying(loc, "looking for", lambda: fs.get_file_info(path).type) != FileType.NotFound


def is_file(loc: Location) -> bool:
    """Whether a file (an object) is there."""
    if isinstance(loc, Path):
        return loc.is_file()
    from pyarrow.fs import FileType

    fs, path = filesystem(loc)
    return retrying(loc, "looking for", lambda: fs.get_file_info(path).type) == FileType.File


def info(loc: Location) -> Entry | None:
    """Size and modification time of a file, or None when it is not there."""
    from pyarrow.fs import FileType

    fs, path = filesystem(loc)
    found = retrying(loc, "looking for", lambda: fs.get_file_info(path))
    if found.type == FileType.NotFound:
        return None
    mtime = found.mtime.timestamp() if found.mtime is not None else None
    return Entry(loc, found.type == FileType.Directory, found.size, mtime)


def list_dir(loc: Location) -> list[Entry]:
    """The files and folders directly in a folder, by name; [] when it is not there."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = filesystem(loc)
    selector = FileSelector(path, allow_not_found=True, recursive=False)
    try:
        found = retrying(loc, "listing", lambda: fs.get_file_info(selector))
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries = []
    for item in found:
        mtime = item.mtime.timestamp() if item.mtime is not None else None
        entries.append(Entry(loc / item.base_name, item.type == FileType.Directory, item.size,
                             mtime))
    return sorted(entries, key=lambda e: e.loc.name)


def read_bytes(loc: Location) -> bytes:
    """A whole file."""
    if isinstance(loc, Path):
        return loc.read_bytes()
    fs, path = filesystem(loc)

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    return retrying(loc, "reading", read)


def read_text(loc: Location) -> str:
    """A whole text file (UTF-8)."""
    return read_bytes(loc).decode("utf-8")


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file so that no reader sees part of it (local: staged and renamed; an
    object store: one PUT)."""
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        staging = loc.with_name(f".{loc.name}.{uuid.uuid4().hex[:8]}.tmp")
        staging.write_bytes(data)
        os.replace(staging, loc)
        return
    fs, path = filesystem(loc)

    def write() -> None:
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    retrying(loc, "writing", write)


def write_text(loc: Location, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(loc, text.encode("utf-8"))


def delete(loc: Location) -> bool:
    """Remove a file; False when it was not there."""
    if isinstance(loc, Path):
        try:
            loc.unlink()
        except FileNotFoundError:
            return False
        return True
    fs, path = filesystem(loc)
    try:
        retrying(loc, "deleting", lambda: fs.delete_file(path))
    except FileNotFoundError:
        return False
    return True


def move(src: Location, dst: Location) -> None:
    """Rename a file (local: atomic; an object store: copy, then delete)."""
    if isinstance(src, Path) and isinstance(dst, Path):
        os.replace(src, dst)
        return
    fs, path = filesystem(src)
    retrying(src, "moving", lambda: fs.move(path, filesystem(dst)[1]))


def makedirs(loc: Location) -> None:
    """Create a folder and its parents (object stores have no folders: nothing to do)."""
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)


def write_parquet(table: Any, loc: Location) -> None:
    """A Parquet file with page checksums (so readers can verify every page)."""
    import pyarrow.parquet as pq

    fs, path = filesystem(loc)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
    retrying(loc, "writing", lambda: pq.write_table(table, path, filesystem=fs,
                                                     write_page_checksum=True))


def read_parquet(loc: Location, columns: list[str] | None = None, verify: bool = False) -> Any:
    """A Parquet file as a pyarrow Table; `verify` checks every page's checksum."""
    import pyarrow.parquet as pq

    fs, path = filesystem(loc)
    return retrying(loc, "reading", lambda: pq.read_table(
        path, filesystem=fs, columns=columns, page_checksum_verification=verify))
