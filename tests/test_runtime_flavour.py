"""One runtime import: the Keras flavour (tf-keras, TF_USE_LEGACY_KERAS=1) is set by the package `__init__`s of
pipeline, models, serving and rocketctr (they import feature_specs.runtime), never by a side-effect import in each
module. Whatever module a program imports first, TensorFlow must find the flavour already set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "feature_specs", "pipeline", "models", "serving", "rocketctr")

# In ONE fresh interpreter, for every module in turn: forget every project module, unset the flavour, import the
# module first-thing, and record what TF_USE_LEGACY_KERAS held at the moment anything first asked for TensorFlow.
# That import is stopped right there, so TensorFlow never loads and each module can be checked from scratch
# (a whole interpreter per module would cost a TensorFlow import each: minutes).
_PROBE = textwrap.dedent("""
    import importlib, json, os, sys

    PACKAGES, MODULES = json.loads(sys.argv[1]), json.loads(sys.argv[2])

    class FirstTensorFlowImport(Exception):
        pass

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
                seen.append(os.environ.get("TF_USE_LEGACY_KERAS"))
                raise FirstTensorFlowImport(name)
            return None

    base_meta, base_env, out = list(sys.meta_path), dict(os.environ), {}
    for module in MODULES:
        for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
            del sys.modules[name]
        os.environ.clear()
        os.environ.update(base_env)
        sys.meta_path[:] = [Watch(), *base_meta]
        seen = []
        try:
            importlib.import_module(module)
        except FirstTensorFlowImport:
            pass
        except Exception as e:  # a module that fails to import for another reason is reported, not skipped
            out[module] = f"import failed: {type(e).__name__}: {e}"
            continue
        out[module] = seen[0] if seen else "no tensorflow"
    print(json.dumps(out))
""")


def public_modules() -> list[str]:
    """Every module and package of the project, as an importer would name it."""
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_every_module_imported_first_sets_the_flavour_before_tensorflow():
    modules = public_modules()
    assert len(modules) > 50 and "models.towers" in modules and "pipeline.evaluate.eval_job" in modules
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(PACKAGES), json.dumps(modules)], cwd=REPO,
                          env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    wrong = {m: v for m, v in result.items() if v not in ("1", "no tensorflow")}
    assert not wrong, f"modules that reach TensorFlow without TF_USE_LEGACY_KERAS=1 (or fail): {wrong}"
    assert result["models.towers"] == "1" and result["common.metrics"] == "no tensorflow"
    assert all(v == "no tensorflow" for m, v in result.items() if m.split(".")[0] == "common"), result


def test_a_library_module_imported_first_gets_tf_keras():
    """The real thing once: a model module with no import of its own for the flavour, in a fresh interpreter."""
    code = ("import models.towers, tensorflow as tf; "
            "print(tf.keras.layers.Dense.__module__, tf.keras.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dense_module, keras_name = proc.stdout.split()[-2:]
    assert dense_module.startswith("tf_keras.") and keras_name.startswith("tf_keras"), proc.stdout
