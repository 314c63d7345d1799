"""Per-part optimizers and the frozen teacher of kd mode: the small adaptors RocketModel plugs in.

Per-part optimizers exist because the parts want different updates: Adagrad's sparse row updates on the
large embedding tables measured 2-3x faster than Adam's dense slot decay, while the dense towers train
best with Adam.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import tensorflow as tf

from feature_specs.schema import FeatureSpec
from models.config import OptimizerConfig

# optimizer name -> its class: the names a config may use (models.config validates against these keys)
OPTIMIZERS = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad,
              "sgd": tf.keras.optimizers.SGD, "ftrl": tf.keras.optimizers.Ftrl}


def make_optimizer(cfg: OptimizerConfig, name: str | None = None) -> tf.keras.optimizers.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optimizer name {cfg.name!r} is not one of {', '.join(OPTIMIZERS)}")
    kw: dict[str, Any] = {"learning_rate": cfg.learning_rate}
    if cfg.clipnorm is not None:
        kw["clipnorm"] = cfg.clipnorm
    if name:
        kw["name"] = name
    return OPTIMIZERS[cfg.name](**kw)


class Teacher:
    """A frozen logit source (features -> [N] logits). Deliberately not a tf.Module: Keras must not track
    it, so its variables never join the student's trainable set or checkpoint."""

    def __init__(self, fn: Callable[[dict[str, tf.Tensor]], Any], description: str, owner: Any = None):
        # `owner` keeps a loaded SavedModel alive: a signature alone does not, and its variables would be freed.
        self.fn, self.description, self.owner = fn, description, owner

    def __call__(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        out = self.fn(features)
        if isinstance(out, dict):
            # the raw logit first: the student's BCE is on the (possibly down-sampled) training data, so its hint
            # target must be on that scale, not the served one (calibrated, sampling-corrected)
            for key in ("booster_logit", "logit_uncalibrated", "logit"):
                if key in out:
                    out = out[key]
                    break
            else:
                raise ValueError(f"teacher {self.description} returned keys {sorted(out)}; expected "
                                 f"'booster_logit' or 'logit'")
        return tf.stop_gradient(tf.reshape(tf.cast(out, tf.float32), [-1]))


def _saved_model_dir(path: Path) -> Path:
    for cand in (path, path / "towers" / "booster"):
        if (cand / "saved_model.pb").exists():
            return cand
    raise FileNotFoundError(f"teacher {path}: neither a SavedModel nor a run dir with towers/booster/saved_model.pb")


def as_teacher(teacher: Any, spec: FeatureSpec) -> Teacher:
    """Accept a callable, a loaded SavedModel (tower export), a RocketModel, or a path to an export/run dir."""
    if isinstance(teacher, (str, os.PathLike)):
        path = _saved_model_dir(Path(teacher))
        return as_teacher(tf.saved_model.load(str(path)), spec)
    if hasattr(teacher, "signatures") and "predict_raw" in getattr(teacher, "signatures", {}):
        sig = teacher.signatures["predict_raw"]
        names = [f.name for f in spec.features]
        return Teacher(lambda feats: sig(**{n: feats[n] for n in names}), "SavedModel predict_raw",
                       owner=teacher)
    if hasattr(teacher, "booster_logits"):
        return Teacher(teacher.booster_logits, type(teacher).__name__)
    if callable(teacher):
        return Teacher(teacher, getattr(teacher, "__name__", type(teacher).__name__))
    raise TypeError(f"teacher: expected a callable, a SavedModel or a path, got {type(teacher).__name__}")
