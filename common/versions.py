"""Numbered model versions under a model base (TF Serving's layout, BASE/<int>/saved_model.pb): the one scan every
reader uses (our server's poller, the export's next number, the eval job's "newest version"), and the one way a
version is published so that no server ever loads half of it.

Publishing rule (docs/SERVING.md "Publishing on object stores"): a version folder counts only when it holds both
`saved_model.pb` and the completion marker `_COMPLETE`.
- Local disk: the version is built in BASE/.tmp-<uuid> (a name TF Serving and `scan_versions` ignore), the marker
  is written into it, and the folder is renamed into place: it appears whole or not at all.
- Object stores (gs://, s3://, hdfs://, ram://: no atomic folder rename): the staged files are copied into
  BASE/<version>/ one object at a time, every file except `saved_model.pb` first, then `saved_model.pb` (stock TF
  Serving loads a version once that file exists, so it never sees missing variables or assets), then `_COMPLETE`
  (what our registry and the eval job wait for). A crash part-way leaves a folder without the marker, which our
  readers never load and `next_version` never reuses.
"""

from __future__ import annotations

import logging
import os

from common import fs

SAVED_MODEL = "saved_model.pb"
COMPLETE_MARKER = "_COMPLETE"
STAGING_PREFIX = ".tmp-"

log = logging.getLogger("rocketctr.versions")


class PublishError(RuntimeError):
    """A version could not be published (it already exists, or the staged folder is not a SavedModel)."""


def version_folders(model_base: fs.PathLike) -> dict[int, str]:
    """Every integer-named child of the base, complete or not ({} when the base does not exist)."""
    base = fs.as_str(model_base)
    return {int(name): fs.join(base, name) for name in fs.listdir(base) if name.isdigit()}


def missing_parts(version_dir: fs.PathLike) -> list[str]:
    """What keeps a version folder from counting as published: [] when complete."""
    return [name for name in (SAVED_MODEL, COMPLETE_MARKER) if not fs.exists(fs.join(version_dir, name))]


def is_complete(version_dir: fs.PathLike) -> bool:
    return not missing_parts(version_dir)


def scan_versions(model_base: fs.PathLike) -> dict[int, str]:
    """The published versions: integer folders holding saved_model.pb and the completion marker."""
    return {v: p for v, p in version_folders(model_base).items() if is_complete(p)}


def newest_version(model_base: fs.PathLike) -> tuple[int, str] | None:
    """(version, folder) of the highest published version, or None."""
    found = scan_versions(model_base)
    return (max(found), found[max(found)]) if found else None


def next_version(model_base: fs.PathLike) -> int:
    """max(any integer folder, complete or not) + 1, or 1 for an empty base: a number a crashed or in-flight
    publish left behind is never reused."""
    return max(version_folders(model_base), default=0) + 1


def staging_dir(model_base: fs.PathLike, token: str) -> str:
    """Where a version is built before publishing (ignored by every scan: not an integer name)."""
    return fs.join(model_base, f"{STAGING_PREFIX}{token}")


def publish_version(staged: fs.PathLike, model_base: fs.PathLike, version: int) -> str:
    """Move a fully written SavedModel folder `staged` to BASE/<version> under the publishing rule above; the
    staged folder is gone afterwards. Raises PublishError when the version exists or `staged` has no
    saved_model.pb."""
    staged, final = fs.as_str(staged), fs.join(model_base, str(version))
    if version < 1:
        raise PublishError(f"version must be a positive integer, got {version}")
    if not fs.exists(fs.join(staged, SAVED_MODEL)):
        raise PublishError(f"{staged}: no {SAVED_MODEL}; only a complete SavedModel can be published")
    if fs.exists(final):
        raise PublishError(f"{final} already exists: versions are immutable, pick another version")
    fs.write_text(fs.join(staged, COMPLETE_MARKER), "")
    if fs.is_local(final):
        os.rename(staged, final)  # atomic on one file system; fails rather than merge if `final` appeared
        return final
    files = [f for f in fs.walk_files(staged) if f not in (SAVED_MODEL, COMPLETE_MARKER)]
    for rel in [*files, SAVED_MODEL, COMPLETE_MARKER]:
        fs.copy(fs.join(staged, rel), fs.join(final, rel))
    fs.rmtree(staged)
    log.info("published %s (%d files copied; %s then %s last)", final, len(files) + 2, SAVED_MODEL,
             COMPLETE_MARKER)
    return final
