"""Process-wide runtime setup, the one place every entry point and the test suite pass through.

It lives in `feature_specs`, the root of the import graph (every other package imports it), so that no
import order can load TensorFlow before the Keras flavour is chosen.

tensorflow-recommenders 0.7.7 refuses Keras 3, so the whole project runs on tf-keras. TensorFlow reads
TF_USE_LEGACY_KERAS when it is first imported, so this module must be imported before TensorFlow.
"""

from __future__ import annotations

import os

VERSION = "0.1.0"

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
