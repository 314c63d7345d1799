"""Export one tower as a SavedModel that real TF Serving can run: three signatures, no py_function.

The exported module tracks only that tower's TowerPath (its encoders, the tables it reads, its dense
layers), so a light export carries no booster variable, and its preprocessing is the very same
models.inputs code the model trained with.

Signatures:
  serving_default(examples: string [N])            -> {ctr, logit, logit_uncalibrated}  (serialized tf.Example;
                                                      extra keys ignored)
  predict_raw(<feature>: model input tensors)      -> {ctr, logit, logit_uncalibrated}
  score_candidates(user/context batch 1, item batch N) -> the same, [N]  (only when the spec has item features)

`logit` is the served, calibrated logit a * z + b + log(r) (Platt fitted on the validation slice, then the
negative down-sampling correction; models.calibration) and ctr = sigmoid(logit); `logit_uncalibrated` is the
tower's raw z, which the offline eval uses to report calibration before/after and a kd student learns from.
"""

from __future__ import annotations

import os
from pathlib import Path

import feature_specs  # noqa: F401  (Keras flavour before TensorFlow)
import tensorflow as tf

from feature_specs import derive
from feature_specs.schema import FeatureSpec
from models.calibration import TowerCalibration

TrackableResource = tf.saved_model.experimental.TrackableResource

USER_SIDES = ("user", "context")
ITEM_SIDES = ("item",)


def _outputs(logit: tf.Tensor, calibration: TowerCalibration) -> dict[str, tf.Tensor]:
    """The same three outputs for every signature: the calibrated logit, its CTR, and the raw logit."""
    raw = tf.identity(logit, name="logit_uncalibrated")
    served = tf.identity(calibration(raw), name="logit")
    return {"ctr": tf.sigmoid(served), "logit": served, "logit_uncalibrated": raw}


class _Untracked:
    """A box the SavedModel object graph does not follow."""

    def __init__(self, value):
        self.value = value


class TowerModule(tf.Module):
    """One tower's scoring path plus its serving functions."""

    def __init__(self, spec: FeatureSpec, path, tower: str, calibration: TowerCalibration | None = None):
        super().__init__(name=f"{tower}_tower")
        self.spec_name, self.tower = spec.name, tower
        # the served-logit map (its a, b variables travel with the tower); identity for a bare path
        self.calibration = calibration if calibration is not None else TowerCalibration(
            tower, spec.negative_sampling_rate)
        # Track the path's state (variables, lookup tables), not its Keras layers: the layers would be
        # re-traced by the Keras SavedModel serializer for nothing (seconds per export).
        self._path = _Untracked(path)
        self.tower_variables = list(path.variables)  # restored objects keep these (names included) for audits
        self.lookup_tables = list(path._flatten(predicate=lambda x: isinstance(x, TrackableResource)))
        parse = derive.parse_spec(spec, features_only=True)

        @tf.function(autograph=False, input_signature=[derive.model_input_specs(spec)])
        def logit(features):  # traced once; the three signatures are thin wrappers around it
            return self._path.value.logits(features)

        self.logit = logit

        @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serving_default(examples):
            parsed = tf.io.parse_example(examples, parse)
            return _outputs(self.logit(derive.to_model_inputs(spec, parsed)), self.calibration)

        @tf.function(autograph=False, input_signature=[derive.serving_input_specs(spec)])
        def predict_raw(features):
            return _outputs(self.logit(features), self.calibration)

        self.serving_default = serving_default
        self.predict_raw = predict_raw
        user_specs = derive.serving_input_specs(spec, sides=USER_SIDES, batch=1)
        item_specs = derive.serving_input_specs(spec, sides=ITEM_SIDES)
        self.has_candidates = bool(item_specs)
        if self.has_candidates:
            @tf.function(autograph=False, input_signature=[user_specs, item_specs])
            def score_candidates(user, items):
                # the user side is embedded once and broadcast as vectors (TowerPath.candidate_logits)
                return _outputs(self._path.value.candidate_logits(user, items), self.calibration)

            self.score_candidates = score_candidates

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        sigs = {"serving_default": self.serving_default.get_concrete_function(),
                "predict_raw": self.predict_raw.get_concrete_function()}
        if self.has_candidates:
            sigs["score_candidates"] = self.score_candidates.get_concrete_function()
        return sigs


def tower_module(model, tower: str) -> TowerModule:
    """A tf.Module tracking only `tower`'s scoring path of a RocketModel ("light" | "booster")."""
    if tower not in ("light", "booster"):
        raise ValueError(f"tower must be 'light' or 'booster', got {tower!r}")
    return TowerModule(model.spec, model.tower_path(tower), tower, model.attach_calibration().towers[tower])


def save_tower(model, tower: str, path: str | os.PathLike) -> Path:
    """Write `tower` of `model` as a SavedModel at `path` (with the three signatures); returns the path."""
    module = tower_module(model, tower)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(out), signatures=module.signatures())
    return out
