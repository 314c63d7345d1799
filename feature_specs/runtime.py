"""Process-wide runtime setup, the one place every entry point and the test suite pass through.

It lives in `feature_specs`, below every package that loads TensorFlow. Each entry point imports it once: the
package `__init__`s of pipeline, models, serving and rocketctr (the command line), and tests/conftest.py; so
whatever module a program imports first, no import order can load TensorFlow before the Keras flavour is chosen
(tests/test_runtime_flavour.py imports every module first-thing to check). `common` needs no flavour: it never
imports TensorFlow.

tensorflow-recommenders 0.7.7 refuses Keras 3, so the whole project runs on tf-keras. TensorFlow reads
TF_USE_LEGACY_KERAS when it is first imported, so this module must be imported before TensorFlow.

Quiet by default (`rocketctr --verbose` or ROCKETCTR_VERBOSE=1 turns it off): TensorFlow 2.21 logs its C++
start-up notices (oneDNN, CUDA stubs, cpu_feature_guard) through absl *before* absl is initialised, so
TF_CPP_MIN_LOG_LEVEL cannot hide them; they are caught by redirecting file descriptor 2 while `tensorflow` is
first imported and replaying every line except absl INFO/WARNING ones (errors still get through). Beam's
optional-client and local-worker notices are dropped by logging filters naming the exact messages. The
project's own warnings are untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

VERSION = "0.1.0"
VERBOSE_ENV = "ROCKETCTR_VERBOSE"  # "1": show TensorFlow's and Beam's start-up noise (inherited by Beam workers)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_TF_LEVEL_IS_OURS = "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # a level the user set is never touched

if os.environ["TF_USE_LEGACY_KERAS"] != "1":  # pragma: no cover - a misconfigured environment
    raise RuntimeError("rocketctr needs TF_USE_LEGACY_KERAS=1 (tf-keras); it was set to "
                       f"{os.environ['TF_USE_LEGACY_KERAS']!r} before feature_specs was imported")


def code_version() -> str:
    """The package version plus the git commit when run from a checkout (recorded in manifests)."""
    head = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git", "HEAD")
    commit = ""
    try:
        with open(head) as f:
            ref = f.read().strip()
        if ref.startswith("ref: "):
            ref_path = os.path.join(os.path.dirname(head), ref[5:])
            if os.path.exists(ref_path):
                with open(ref_path) as f:
                    commit = f.read().strip()[:12]
        else:
            commit = ref[:12]
    except OSError:
        pass
    return f"{VERSION}+{commit}" if commit else VERSION


# absl's pre-initialisation banner, its INFO / WARNING lines (`I0000 00:00:1796.. 1234 port.cc:153] ...`) and
# the CUDA stub's cuInit error on a machine without a GPU driver; other E (error) and F (fatal) lines are kept.
NATIVE_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
                          r"STDERR|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
                          r"|E\d{4} [\d:.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit)")
# logger name -> message prefixes of Beam notices that are not actionable here (optional GCP clients;
# RunInference's memory probe, whose optional import fails in Beam 2.77 although `resource` exists; the local
# multi-process runner's missing semi-persistent directory, relayed from each worker)
BEAM_NOISE = {
    "": ("apitools not found, and bigquery client libraries are not available",
         "Resource module is not available for current platform, memory usage cannot be fetched"),
    "apache_beam.runners.portability.local_job_service": ("Worker: severity: WARN",),
}
_BEAM_NOISE_DETAIL = "No semi_persistent_directory found"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbose(on: bool) -> None:
    """Switch the start-up noise on (--verbose) or off; exported through the environment so Beam worker
    processes started later follow. TensorFlow's C++ log level only matters if TensorFlow is not loaded yet."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
        if _TF_LEVEL_IS_OURS:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _uninstall_quiet()
    else:
        os.environ.pop(VERBOSE_ENV, None)
        if _TF_LEVEL_IS_OURS:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        _install_quiet()


class _BeamNoiseFilter(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.name == "apache_beam.runners.portability.local_job_service":
            return not (msg.startswith(self.prefixes) and _BEAM_NOISE_DETAIL in msg)
        return not msg.startswith(self.prefixes)


_FILTERS: dict[str, _BeamNoiseFilter] = {name: _BeamNoiseFilter(p) for name, p in BEAM_NOISE.items()}


def filter_native_noise(text: str) -> str:
    """`text` without absl's pre-initialisation banner and INFO/WARNING lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not NATIVE_NOISE.match(line))


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` with fd 2 captured, then replays the capture minus the noise."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            sink = tempfile.TemporaryFile()
        except (OSError, ValueError):  # no usable fd 2 (a daemon): import loudly rather than not at all
            self._inner.exec_module(module)
            return
        os.dup2(sink.fileno(), 2)
        try:
            self._inner.exec_module(module)
            try:  # the CUDA stub's cuInit notice comes when devices are first listed: inside the capture too
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 - a broken device setup surfaces at first use, loudly
                pass
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = filter_native_noise(sink.read().decode("utf-8", "replace"))
            sink.close()
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: the first `import tensorflow` of the process goes through _QuietLoader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        _uninstall_hook()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_HOOK = _QuietTensorFlowImport()


def _uninstall_hook() -> None:
    while _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def _install_quiet() -> None:
    if "tensorflow" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    for name, f in _FILTERS.items():
        if f not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(f)


def _uninstall_quiet() -> None:
    _uninstall_hook()
    for name, f in _FILTERS.items():
        logging.getLogger(name).removeFilter(f)


set_verbose(verbose())
