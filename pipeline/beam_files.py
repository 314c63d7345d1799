"""File helpers for the Beam jobs, all through Beam's `FileSystems`, so an output path may be local, `gs://`
or `hdfs://` alike (and a worker on a remote runner writes where the driver reads).

Never `pathlib` or `os.path` on these paths: pathlib folds `gs://b/x` into `gs:/b/x`. `publish_text` is the
"atomic as possible" write a reader may poll for: on a local disk a temporary sibling renamed into place (POSIX
rename is atomic); on an object store one whole-object write (an object becomes visible only when its upload
has completed, and a rename there would be a copy plus a delete, no more atomic).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems

# The path algebra (no I/O) is common to both file layers; only the reads and writes differ (FileSystems here).
from common.fs import absolute, as_str, is_local, join, native  # noqa: F401  (re-exported)

TMP_SUFFIX = ".tmp-"  # + a random hex: the temporary sibling of a file being published on a local disk


def exists(path: str | os.PathLike) -> bool:
    return FileSystems.exists(as_str(path))


def match(pattern: str | os.PathLike) -> list[str]:
    """The paths matching a glob pattern, sorted (an empty list when nothing matches)."""
    return sorted(m.path for m in FileSystems.match([as_str(pattern)])[0].metadata_list)


def read_bytes(path: str | os.PathLike) -> bytes:
    with FileSystems.open(as_str(path)) as fh:
        return fh.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file (parent folders are created on a local disk; object stores have none)."""
    with FileSystems.create(as_str(path)) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def publish_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write so that a reader sees either no file or the whole file (see the module docstring)."""
    path = as_str(path)
    if not is_local(path):
        write_bytes(path, data)
        return
    tmp = f"{path}{TMP_SUFFIX}{uuid.uuid4().hex}"
    write_bytes(tmp, data)
    try:
        FileSystems.rename([tmp], [path])
    except Exception:
        delete([tmp])
        raise


def publish_text(path: str | os.PathLike, text: str) -> None:
    publish_bytes(path, text.encode("utf-8"))


def publish_json(path: str | os.PathLike, doc: Any) -> None:
    publish_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def mkdirs(path: str | os.PathLike) -> None:
    """Create a local folder (with parents) if missing; a no-op on object stores, which have no folders."""
    if is_local(path) and not exists(path):
        FileSystems.mkdirs(as_str(path))


def rename(sources: Iterable[str], destinations: Iterable[str]) -> None:
    FileSystems.rename(list(sources), list(destinations))


def delete(paths: Iterable[str]) -> None:
    """Delete files in the order given (a local folder recursively); repeated paths and paths already absent
    are skipped, so a listing made of overlapping patterns can be passed as is."""
    present = [p for p in dict.fromkeys(paths) if exists(p)]
    if present:
        FileSystems.delete(present)
