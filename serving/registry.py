"""Version management for one model base: poll, load in the background, warm up, swap atomically.

Mirrors TF Serving's file-system source with the `latest N` policy: version folders are integer names under
the model base (anything else, like the export's .tmp-<uuid>, is ignored) that are published, i.e. hold
saved_model.pb and the completion marker (common.versions: on an object store a version is copied file by
file, so a folder without the marker may still be in flight); the newest N that load are served. The base may
be local or any URL TensorFlow reads (gs://, hdfs://, ram://). A new version is loaded and warmed up on the
poll thread while the current one keeps serving; the swap is a single reference assignment, so a request sees
either the old or the new set, never a mix. A version that fails to load is reported (END + error in
GetModelStatus, a JSON log line, a counter) and does not displace the version already serving; it is retried a few
polls later (a copy may be in flight).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import grpc
import tensorflow as tf

from common import fs, versions
from serving.monitoring import Metrics
from serving.signatures import RequestError, Servable, decode_inputs, load_servable
from serving.warmup import read_warmup

# tensorflow_serving ModelVersionStatus.State values
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class VersionState:
    version: int
    state: int
    error_code: int = 0  # grpc / tensorflow.error.Code numbering; 0 = OK
    error_message: str = ""


def warm_up(servable: Servable) -> int:
    """Replay the version's warmup requests; any failure fails the load (as in TF Serving)."""
    requests, _skipped = read_warmup(servable.path)
    for r in requests:
        servable.runner(r.model_spec.signature_name).run(decode_inputs(r.inputs), r.output_filter)
    return len(requests)


class ModelRegistry:
    """The versions of `model_name` under `model_base` and their states."""

    def __init__(self, model_base: str | os.PathLike, model_name: str, poll_seconds: float = 1.0,
                 num_versions: int = 1, load_retries: int = 3, metrics: Metrics | None = None,
                 log: logging.Logger | None = None):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        self.model_base = fs.as_str(model_base)
        self.model_name = model_name
        self.poll_seconds = poll_seconds
        self.num_versions = num_versions
        self.load_retries = load_retries
        self.metrics = metrics or Metrics()
        self.log = log or logging.getLogger("rocketctr.serving")
        self._available: dict[int, Servable] = {}  # replaced, never mutated: readers need no lock
        self._states: dict[int, VersionState] = {}
        self._failures: dict[int, int] = {}
        self._unpublished: set[int] = set()  # integer folders without the marker, reported once each
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Load what is on disk now (so a started server serves at once), then poll in the background."""
        self.poll_once()
        self._thread = threading.Thread(target=self._loop, name=f"poll-{self.model_name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a poll must never kill the thread: the old version keeps serving
                self.log.exception("version poll failed", extra={"fields": {"model": self.model_name}})

    # ---- polling ----------------------------------------------------------------------------------
    def poll_once(self) -> None:
        with self._poll_lock:
            on_disk = self._published()
            keep: dict[int, Servable] = {}
            for v in sorted(on_disk, reverse=True):
                if len(keep) == self.num_versions:
                    break
                if v in self._available:
                    keep[v] = self._available[v]
                elif self._failures.get(v, 0) < self.load_retries:
                    s = self._load(v, on_disk[v])
                    if s is not None:
                        keep[v] = s
            old, self._available = self._available, keep
            if keep:
                self.metrics.set_available_version(self.model_name, max(keep))
            for v in old:
                if v not in keep:
                    self._states[v] = VersionState(v, END)
                    self.log.info("version unloaded", extra={"fields": {"model": self.model_name, "version": v}})

    def _published(self) -> dict[int, str]:
        """Published versions; a folder missing saved_model.pb or the marker is skipped (never loaded, never a
        failure: a copy may be in flight) and logged once."""
        out, folders = {}, versions.version_folders(self.model_base)
        for v, path in folders.items():
            missing = versions.missing_parts(path)
            if not missing:
                out[v] = path
            elif v not in self._unpublished:
                self._unpublished.add(v)
                self.log.info("version folder not published yet; not loading it", extra={"fields": {
                    "model": self.model_name, "version": v, "path": path, "missing": missing}})
        self._unpublished &= set(folders) - set(out)  # a folder that comes back unfinished is reported again
        return out

    def _load(self, version: int, path: str) -> Servable | None:
        self._states[version] = VersionState(version, LOADING)
        t0 = time.perf_counter()
        try:
            s = load_servable(path, version)
            n = warm_up(s)
        except Exception as e:  # noqa: BLE001 - any failure is reported and the old version stays
            self._failures[version] = self._failures.get(version, 0) + 1
            code = grpc.StatusCode.NOT_FOUND if isinstance(e, (FileNotFoundError, tf.errors.NotFoundError)) \
                else grpc.StatusCode.UNKNOWN
            if isinstance(e, RequestError):
                code = e.code
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self._states[version] = VersionState(version, END, code.value[0], msg)
            self.metrics.model_load(self.model_name, "failed")
            self.log.error("version failed to load; previous version keeps serving",
                           extra={"fields": {"model": self.model_name, "version": version, "path": str(path),
                                             "attempt": self._failures[version], "error": msg}})
            return None
        self._states[version] = VersionState(version, AVAILABLE)
        self.metrics.model_load(self.model_name, "ok")
        self.log.info("version available", extra={"fields": {
            "model": self.model_name, "version": version, "path": str(path), "warmup_requests": n,
            "load_seconds": round(time.perf_counter() - t0, 3), "signatures": sorted(s.runners)}})
        return s

    # ---- lookups ----------------------------------------------------------------------------------
    @property
    def available_versions(self) -> list[int]:
        return sorted(self._available)

    def get(self, model_name: str, version: int | None = None) -> Servable:
        """The servable for a request's model_spec; NOT_FOUND for an unknown model or unserved version."""
        if model_name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {model_name!r} is not served here "
                                                          f"(serving {self.model_name!r})")
        available = self._available
        if not available:
            raise RequestError(grpc.StatusCode.UNAVAILABLE if not self._states else grpc.StatusCode.NOT_FOUND,
                               f"model {model_name!r} has no available version under {self.model_base}")
        if version is None:
            return available[max(available)]
        if version not in available:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {model_name!r} version {version} is not "
                                                          f"available (serving {sorted(available)})")
        return available[version]

    def states(self, model_name: str, version: int | None = None) -> list[VersionState]:
        if model_name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {model_name!r} is not served here")
        if version is not None:
            if version not in self._states:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {model_name!r} has no version {version}")
            return [self._states[version]]
        return [self._states[v] for v in sorted(self._states, reverse=True)]
