"""What the eval job scores: MODEL arguments resolved to SavedModels, and the RunInference model handler.

The job consumes SavedModels only (never the models package): the contract is the signature
serving_default(examples: tf.string [N]) -> {"ctr": [N], "logit": [N]}, plus an optional "logit_uncalibrated"
[N] (the tower's raw logit in rocketctr exports), from which the job reports calibration before/after.
Beam's stock TFModelHandlerTensor loads with tf.keras.models.load_model and stacks tensors into one positional
argument, which fits neither a plain tf.Module export nor a keyword string signature, so a small handler calls
the signature directly. Model paths may be local or any URL TensorFlow's file systems read (gs://, hdfs://,
ram://): they are checked with common.fs in the driver and loaded with tf.saved_model.load on the workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from common import fs
from common.versions import newest_version

SIGNATURE = "serving_default"
UNCALIBRATED = "logit_uncalibrated"  # optional output: the raw logit before the served calibration
TOWER_NAMES = ("light", "booster")


class ModelResolveError(ValueError):
    """A MODEL argument is neither a SavedModel folder nor a training run dir with tower exports."""


@dataclass(frozen=True)
class ModelRef:
    """One SavedModel to score. `group` + `seed` is how `compare` treats repeated runs of one setup."""

    label: str  # unique within one eval
    path: str
    role: str  # candidate | baseline | reference (scored alongside, not gated)
    group: str  # e.g. "<config name>/light": runs differing only in seed share it
    tower: str | None = None
    seed: int | None = None
    mode: str | None = None
    run_dir: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"label": self.label, "path": self.path, "role": self.role, "group": self.group, "tower": self.tower,
                "seed": self.seed, "mode": self.mode, "run_dir": self.run_dir}


def is_saved_model(p: str | os.PathLike) -> bool:
    return fs.isfile(fs.join(p, "saved_model.pb"))


def resolve_model(arg: str | os.PathLike, role: str = "candidate", name: str | None = None) -> list[ModelRef]:
    """A version folder -> one model; a base folder of numeric versions -> its newest version;
    a run dir (config.json) -> its towers/light and towers/booster exports (those present)."""
    p = fs.absolute(arg)
    if not fs.exists(p):
        raise ModelResolveError(f"model {arg}: no such file or directory")
    if is_saved_model(p):
        folder = fs.basename(fs.parent(p))
        label = name or f"{folder}/{fs.basename(p)}"
        return [ModelRef(label=label, path=p, role=role, group=name or folder)]
    newest = newest_version(p)  # published versions only (saved_model.pb + marker): common.versions
    if newest:
        return resolve_model(newest[1], role, name)
    if fs.isfile(fs.join(p, "config.json")):
        return _run_towers(p, role, name)
    raise ModelResolveError(f"model {arg}: expected a SavedModel version folder (with saved_model.pb), a folder of "
                            f"numeric versions, or a training run dir (with config.json and towers/)")


def _run_towers(run_dir: str | os.PathLike, role: str, name: str | None) -> list[ModelRef]:
    info = read_run_info(run_dir)
    run_name = fs.basename(fs.absolute(run_dir))
    setup = name or info.get("name") or run_name
    refs = [ModelRef(label=f"{name or run_name}/{t}", path=fs.absolute(fs.join(run_dir, "towers", t)), role=role,
                     group=f"{setup}/{t}", tower=t, seed=info.get("seed"), mode=info.get("mode"),
                     run_dir=fs.absolute(run_dir), info=info)
            for t in TOWER_NAMES if is_saved_model(fs.join(run_dir, "towers", t))]
    if not refs:
        raise ModelResolveError(f"model {run_dir}: a run dir but neither towers/light nor towers/booster holds a "
                                f"SavedModel (saved_model.pb); has training finished?")
    return refs


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """name / mode / seed from RUN_DIR/config.json (the resolved RunConfig, top level or under "config")."""
    p = fs.join(run_dir, "config.json")
    try:
        doc = fs.read_json(p)
    except Exception as e:  # noqa: BLE001 - unreadable (whatever the file system raises) or not JSON
        raise ModelResolveError(f"{p}: cannot read the run config: {e}") from None
    cfg = doc.get("config", doc) if isinstance(doc, dict) else {}
    train = cfg.get("train", {}) if isinstance(cfg, dict) else {}
    return {"name": cfg.get("name"), "mode": train.get("mode"), "seed": train.get("seed")}


def unique_labels(refs: Iterable[ModelRef]) -> list[ModelRef]:
    """Give every model a distinct label (a baseline may be the same folder name as the candidate)."""
    out, seen = [], set()
    for r in refs:
        label, k = r.label, 2
        while label in seen:
            label, k = f"{r.label}#{k}", k + 1
        seen.add(label)
        out.append(r if label == r.label else ModelRef(**{**r.__dict__, "label": label}))
    return out


class _Loaded:
    """The loaded SavedModel and its serving signature (the module must stay referenced)."""

    def __init__(self, path: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(path)
        sigs = getattr(self.module, "signatures", {})
        if SIGNATURE not in sigs:
            raise ModelResolveError(f"{path}: no {SIGNATURE!r} signature (has: {', '.join(sigs) or 'none'})")
        self.fn = sigs[SIGNATURE]
        self.path = path
        self._tf = tf

    def __call__(self, examples: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        out = self.fn(examples=self._tf.constant(list(examples), dtype=self._tf.string))
        missing = {"ctr", "logit"} - set(out)
        if missing:
            raise ModelResolveError(f"{self.path}: {SIGNATURE} returned {sorted(out)}, missing {sorted(missing)}")
        ctr = np.asarray(out["ctr"], dtype=np.float64).reshape(-1)
        logit = np.asarray(out["logit"], dtype=np.float64).reshape(-1)
        if len(ctr) != len(examples) or len(logit) != len(examples):
            raise ModelResolveError(f"{self.path}: {SIGNATURE} returned {len(ctr)} ctr / {len(logit)} logit values "
                                    f"for a batch of {len(examples)} examples (expected shape [N])")
        raw = np.asarray(out[UNCALIBRATED], dtype=np.float64).reshape(-1) if UNCALIBRATED in out else None
        if raw is not None and len(raw) != len(examples):
            raise ModelResolveError(f"{self.path}: {SIGNATURE} returned {len(raw)} {UNCALIBRATED} values for a "
                                    f"batch of {len(examples)} examples (expected shape [N])")
        return ctr, logit, raw


class SavedModelHandler(ModelHandler[bytes, PredictionResult, _Loaded]):
    """RunInference handler: batches of serialized tf.Examples -> PredictionResult(example, (ctr, logit,
    uncalibrated logit or None))."""

    def __init__(self, path: str, max_batch_size: int = 1024, min_batch_size: int = 1):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._path = path

    def load_model(self) -> _Loaded:
        return _Loaded(self._path)

    def update_model_path(self, model_path: str | None = None) -> None:
        self._path = model_path or self._path

    def run_inference(self, batch: Sequence[bytes], model: _Loaded,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        ctr, logit, raw = model(batch)
        raws = [None] * len(batch) if raw is None else [float(r) for r in raw]
        return [PredictionResult(x, (float(c), float(z), r), self._path)
                for x, c, z, r in zip(batch, ctr, logit, raws)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(x) for x in batch)

    def get_metrics_namespace(self) -> str:
        return "rocketctr_eval"
