"""Everything that must agree across stages, derived in one place from a FeatureSpec.

The tf.io parse spec, the dense tensors the Keras model takes, and the serving signatures' inputs all come
from here; a test checks that they agree for every shipped spec. The record layout they read (what the Beam
job writes into each tf.train.Example: keys, wire types, parse defaults) is `record_fields`, plain data defined
in `feature_specs.example_fields` so that the Beam job needs no TensorFlow; this module maps it to TensorFlow.
Model/serving tensors: categorical [N] string, numeric [N] float32, sequence [N, L] string padded with "".
"""

from __future__ import annotations

import tensorflow as tf

from feature_specs.example_fields import PAD, WIRE_BYTES, WIRE_FLOAT, WIRE_INT64, record_fields
from feature_specs.schema import Feature, FeatureSpec

TF_DTYPES = {WIRE_BYTES: tf.string, WIRE_FLOAT: tf.float32, WIRE_INT64: tf.int64}


def parse_spec(spec: FeatureSpec, features_only: bool = False) -> dict[str, tf.io.FixedLenFeature
                                                                        | tf.io.RaggedFeature]:
    """The tf.io.parse_example spec for the records written by preprocessing (from `record_fields`' data)."""
    out: dict = {}
    for key, rf in record_fields(spec).items():
        if features_only and rf.role != "feature":
            continue
        dtype = TF_DTYPES[rf.wire]
        if rf.varlen:
            out[key] = tf.io.RaggedFeature(dtype=dtype, row_splits_dtype=tf.int64)
        else:
            out[key] = tf.io.FixedLenFeature([], dtype, default_value=rf.default)
    return out


def model_input_specs(spec: FeatureSpec) -> dict[str, tf.TensorSpec]:
    """The dense tensors the Keras model takes (batch dimension None). Keras inputs derive from this."""
    out: dict[str, tf.TensorSpec] = {}
    for f in spec.features:
        if f.kind == "numeric":
            out[f.name] = tf.TensorSpec([None], tf.float32, name=f.name)
        elif f.kind == "categorical":
            out[f.name] = tf.TensorSpec([None], tf.string, name=f.name)
        else:
            out[f.name] = tf.TensorSpec([None, None], tf.string, name=f.name)
    return out


def serving_input_specs(spec: FeatureSpec, sides: tuple[str, ...] | None = None,
                        batch: int | None = None) -> dict[str, tf.TensorSpec]:
    """Raw-feature inputs of the serving signatures: the model's inputs, optionally one side's only.

    `score_candidates` uses sides=("user", "context") with batch=1 and sides=("item",) with batch=None.
    """
    out = {}
    for name, ts in model_input_specs(spec).items():
        if sides is not None and spec.feature(name).side not in sides:
            continue
        out[name] = tf.TensorSpec([batch, *ts.shape[1:]], ts.dtype, name=name)
    return out


def to_model_inputs(spec: FeatureSpec, parsed: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Turn parse_example output into the model's dense inputs (sequences padded with PAD)."""
    out = {}
    for f in spec.features:
        t = parsed[f.name]
        if f.kind == "sequence":
            if isinstance(t, tf.RaggedTensor):
                t = t.to_tensor(default_value=PAD)
            t = truncate_sequence(t, f)
        out[f.name] = t
    return out


def truncate_sequence(t: tf.Tensor, f: Feature) -> tf.Tensor:
    """Keep at most max_length positions (the last ones: preprocessing keeps the most recent items)."""
    return t[:, -f.max_length:] if f.max_length else t


def example_keras_inputs(spec: FeatureSpec) -> dict[str, tuple[tuple, tf.DType]]:
    """(shape without batch, dtype) per model input: what `tf.keras.Input` is built from."""
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in model_input_specs(spec).items()}
