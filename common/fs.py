"""The one file-system layer for TensorFlow-side paths: local folders, `gs://`, `hdfs://`, `ram://`, `s3://`
(whatever `tf.io.gfile` has a plugin for), so training, export, serving and the readers of the preprocessing output
never care where a path lives.

Why not pathlib: `Path("gs://b/x")` silently becomes `gs:/b/x`, and `os.path.join`/`glob`/`os.replace` only see the
local disk. Every function takes `str | os.PathLike` and returns `str` paths. TensorFlow is imported on first use,
so `common` stays importable without it (the Beam side has its own layer on Beam's `FileSystems`).

Object stores have no atomic rename (a "folder" rename is a copy of every object; on `ram://` it does not even
move the children), so `write_text` / `write_bytes` write the final object exactly once there (one object upload is
atomic), and use temp-name-then-rename only on a local disk. Publishing a folder of files is `common.versions`.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def _gfile():
    import tensorflow as tf  # late: `common` must import without TensorFlow

    return tf.io.gfile


def as_str(path: PathLike) -> str:
    """The path as a string; `file://` URLs become plain local paths."""
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"path must be str or os.PathLike of str, got {type(path).__name__}: {path!r}")
    return p[len("file://"):] if p.startswith("file://") else p


def scheme(path: PathLike) -> str:
    """'gs', 'hdfs', 'ram', ... for a URL; '' for a local path."""
    p = as_str(path)
    head, sep, _ = p.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_local(path: PathLike) -> bool:
    return scheme(path) == ""


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...` for local paths and URLs alike (never collapses the `//` after the scheme)."""
    b = as_str(base)
    if is_local(b):
        return os.path.join(b, *parts)
    out = b
    for part in parts:
        part = str(part)
        if not part:
            continue
        out = out.rstrip("/") + "/" + part.lstrip("/") if not out.endswith("://") else out + part.lstrip("/")
    return out


def parent(path: PathLike) -> str:
    p = as_str(path)
    if is_local(p):
        return os.path.dirname(p.rstrip(os.sep)) or "."
    head, _, rest = p.partition("://")
    return f"{head}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(path: PathLike) -> str:
    p = as_str(path).rstrip("/")
    return os.path.basename(p) if is_local(p) else p.rsplit("/", 1)[-1]


def native(path: PathLike) -> str | Path:
    """What a function hands back to its caller: a local path as a `Path` (so local callers keep using pathlib),
    a URL as `str`."""
    p = as_str(path)
    return Path(p) if is_local(p) else p


def absolute(path: PathLike) -> str:
    """A local path resolved to an absolute one (what a run records); URLs unchanged."""
    p = as_str(path)
    return str(Path(p).resolve()) if is_local(p) else p


# ---------------------------------------------------------------------------------------- queries
def exists(path: PathLike) -> bool:
    return _gfile().exists(as_str(path))


def isdir(path: PathLike) -> bool:
    return _gfile().isdir(as_str(path))


def isfile(path: PathLike) -> bool:
    p = as_str(path)
    return _gfile().exists(p) and not _gfile().isdir(p)


def size(path: PathLike) -> int:
    return int(_gfile().stat(as_str(path)).length)


def listdir(path: PathLike) -> list[str]:
    """Child names, sorted (no trailing `/`, which GCS adds to "folders"); [] when `path` is not a folder."""
    p = as_str(path)
    if not _gfile().isdir(p):
        return []
    return sorted({name.rstrip("/") for name in _gfile().listdir(p)})


def glob(pattern: PathLike) -> list[str]:
    """Paths matching a `*` pattern, sorted (a stable order: shard lists, version scans)."""
    return sorted(_gfile().glob(as_str(pattern)))


def walk_files(root: PathLike) -> list[str]:
    """Every file under `root` as a `/`-separated path relative to it, sorted. Names are checked to exist:
    TensorFlow's ram:// lists by raw prefix, so `assets/` also "holds" `.extra` of a sibling `assets.extra/`."""
    r = as_str(root)
    out = []
    for folder, _dirs, files in _gfile().walk(r):
        rel = folder[len(r):].strip("/").replace(os.sep, "/") if folder.startswith(r) else ""
        out += [f"{rel}/{f}" if rel else f for f in files if is_local(r) or isfile(join(folder, f))]
    return sorted(out)


# ---------------------------------------------------------------------------------------- read / write
def makedirs(path: PathLike) -> None:
    _gfile().makedirs(as_str(path))


def read_bytes(path: PathLike) -> bytes:
    with _gfile().GFile(as_str(path), "rb") as fh:
        return fh.read()


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: PathLike, data: bytes) -> str:
    """Write `data` as `path`, as atomically as the store allows: a local file is written under a temporary name
    and renamed over the target (a reader sees the old or the new file, never half of one); on an object store
    the object is uploaded once, which is atomic there. Parent folders are created."""
    p = as_str(path)
    makedirs(parent(p))
    if is_local(p):
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return p
    if scheme(p) == "ram" and _gfile().exists(p):
        _gfile().remove(p)  # TensorFlow's ram:// appends to an existing file instead of replacing it
    with _gfile().GFile(p, "wb") as fh:
        fh.write(data)
    return p


def write_text(path: PathLike, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, doc: Any, **dumps: Any) -> str:
    return write_text(path, json.dumps(doc, **({"indent": 1} | dumps)))


# ---------------------------------------------------------------------------------------- copy / delete
def copy(src: PathLike, dst: PathLike, overwrite: bool = False) -> None:
    d = as_str(dst)
    makedirs(parent(d))
    _gfile().copy(as_str(src), d, overwrite=overwrite)


def remove(path: PathLike) -> None:
    _gfile().remove(as_str(path))


def rmtree(path: PathLike, missing_ok: bool = True) -> None:
    """Delete a folder and everything under it. On URLs the files are deleted one by one, then the folders
    (TensorFlow's `ram://` rmtree leaves the files behind)."""
    p = as_str(path)
    if is_local(p):
        shutil.rmtree(p, ignore_errors=missing_ok)
        return
    g = _gfile()
    if not g.exists(p):
        if missing_ok:
            return
        raise FileNotFoundError(p)
    folders = []
    for folder, _dirs, files in g.walk(p):
        for f in files:
            if g.exists(join(folder, f)):  # ram:// lists a sibling's names too (see walk_files)
                g.remove(join(folder, f))
        folders.append(folder)
    for folder in sorted(folders, key=len, reverse=True):
        if g.exists(folder):
            g.rmtree(folder)
