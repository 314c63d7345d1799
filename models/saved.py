"""Export one tower as a SavedModel that real TF Serving can run: four signatures, no py_function.

The exported module tracks only that tower's TowerPath (its encoders, the tables it reads, its dense
layers), so a light export carries no booster variable, and its preprocessing is the very same
models.inputs code the model trained with.

Signatures:
  serving_default(examples: string [N])            -> {ctr, logit, logit_uncalibrated}  (serialized tf.Example;
                                                      extra keys ignored)
  predict_raw(<feature>: model input tensors)      -> {ctr, logit, logit_uncalibrated}
  score_candidates(user/context batch 1, item batch N) -> the same, [N]  (only when the spec has item features)
  score_packed(user_tokens/_numeric [1, k], item_tokens/_numeric [N, k']) -> the same, [N]  (score_candidates'
                                                      features packed one tensor per side and dtype:
                                                      feature_specs.packed; the lean path of a Python server)

`logit` is the served, calibrated logit a * z + b + log(r) (Platt fitted on the validation slice, then the
negative down-sampling correction; models.calibration) and ctr = sigmoid(logit); `logit_uncalibrated` is the
tower's raw z, which the offline eval uses to report calibration before/after and a kd student learns from.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from common import fs
from feature_specs import derive, packed
from feature_specs.schema import FeatureSpec
from models.calibration import TowerCalibration

TrackableResource = tf.saved_model.experimental.TrackableResource

USER_SIDES = ("user", "context")
# keep the split first layer's kernel rows pre-gathered (TowerPath.split_kernels): measured 1-4 % off the light
# net's score_packed at N=300, 3-6 % off the booster's (docs/SERVING.md); False exports without them (A/B runs)
PRESPLIT_KERNELS = True
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
        def logit(features):  # traced once; the signatures are thin wrappers around it
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
            # the split first layer's user rows and item rows of the kernel, gathered here once instead of per
            # request (TowerPath.split_kernels); non-trainable copies, saved beside the tower's own variables
            split = path.split_kernels(frozenset(user_specs)) if PRESPLIT_KERNELS else None
            self.split_kernels = [tf.Variable(k, trainable=False, name=f"{tower}_split_kernel_{i}")
                                  for i, k in enumerate(split or [])]
            kernels = self.split_kernels or None

            @tf.function(autograph=False, input_signature=[user_specs, item_specs])
            def score_candidates(user, items):
                # the user side is embedded once and broadcast as vectors (TowerPath.candidate_logits)
                return _outputs(self._path.value.candidate_logits(user, items, kernels), self.calibration)

            self.score_candidates = score_candidates
            layout = packed.packed_layout(spec)

            @tf.function(autograph=False, input_signature=[packed.packed_input_specs(spec)])
            def score_packed(tensors):
                # the same scoring path as score_candidates, after one Unpack per block
                user, items = packed.unpack(layout, tensors)
                return _outputs(self._path.value.candidate_logits(user, items, kernels), self.calibration)

            self.score_packed = score_packed

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        sigs = {"serving_default": self.serving_default.get_concrete_function(),
                "predict_raw": self.predict_raw.get_concrete_function()}
        if self.has_candidates:
            sigs["score_candidates"] = self.score_candidates.get_concrete_function()
            sigs[packed.SIGNATURE] = self.score_packed.get_concrete_function()
        return sigs


def tower_module(model, tower: str) -> TowerModule:
    """A tf.Module tracking only `tower`'s scoring path of a RocketModel ("light" | "booster")."""
    if tower not in ("light", "booster"):
        raise ValueError(f"tower must be 'light' or 'booster', got {tower!r}")
    return TowerModule(model.spec, model.tower_path(tower), tower, model.attach_calibration().towers[tower])


def save_tower(model, tower: str, path: str | os.PathLike) -> str | Path:
    """Write `tower` of `model` as a SavedModel at `path`, local or a URL (with its signatures); returns the
    path (a Path when local)."""
    module = tower_module(model, tower)
    out = fs.as_str(path)
    fs.makedirs(fs.parent(out))
    tf.saved_model.save(module, out, signatures=module.signatures())
    return fs.native(out)
