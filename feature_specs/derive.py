"""Everything that must agree across stages, derived in one place from a FeatureSpec.

The record layout (what the Beam job writes into each tf.train.Example), the tf.io parse spec, the dense
tensors the Keras model takes, and the serving signatures' inputs all come from here. A test checks that
they agree for every shipped spec.

Record layout, per spec entry:
- categorical feature: bytes, one value (the cleaned raw token; absent when missing -> parsed as "").
- numeric feature: float, one value (absent when missing -> parsed as the feature's default).
- sequence feature: bytes, 0..max_length values (the most recent max_length kept).
- label: float 0/1 under the label's name; group key: bytes; weight: float; timestamp: int64 (if any).
Model/serving tensors: categorical [N] string, numeric [N] float32, sequence [N, L] string padded with "".
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from feature_specs.schema import Feature, FeatureSpec

PAD = ""  # the padding / missing token for string inputs; it maps to the OOV / mask slot


@dataclass(frozen=True)
class RecordField:
    """One key of the tf.train.Example the preprocessing writes."""

    key: str
    dtype: tf.DType  # tf.string | tf.float32 | tf.int64
    varlen: bool
    role: str  # feature | label | group_key | weight | timestamp


def record_fields(spec: FeatureSpec) -> dict[str, RecordField]:
    """The keys and types of the examples written by preprocessing (training's and eval's input)."""
    out: dict[str, RecordField] = {}
    for f in spec.features:
        dtype = tf.float32 if f.kind == "numeric" else tf.string
        out[f.name] = RecordField(f.name, dtype, f.kind == "sequence", "feature")
    out[spec.label.name] = RecordField(spec.label.name, tf.float32, False, "label")
    if spec.group_key is not None and spec.group_key not in out:
        out[spec.group_key] = RecordField(spec.group_key, tf.string, False, "group_key")
    if spec.weight is not None:
        out[spec.weight] = RecordField(spec.weight, tf.float32, False, "weight")
    if spec.timestamp is not None and spec.timestamp not in out:
        out[spec.timestamp] = RecordField(spec.timestamp, tf.int64, False, "timestamp")
    return out


def group_key_field(spec: FeatureSpec) -> str | None:
    """The record key holding the group (user) id; it may double as a feature of the same name."""
    return spec.group_key


def parse_spec(spec: FeatureSpec, features_only: bool = False) -> dict[str, tf.io.FixedLenFeature
                                                                        | tf.io.RaggedFeature]:
    """The tf.io.parse_example spec for the records written by preprocessing."""
    out: dict = {}
    for key, rf in record_fields(spec).items():
        if features_only and rf.role != "feature":
            continue
        if rf.varlen:
            out[key] = tf.io.RaggedFeature(dtype=rf.dtype, row_splits_dtype=tf.int64)
        elif rf.role == "feature" and rf.dtype == tf.float32:
            out[key] = tf.io.FixedLenFeature([], tf.float32, default_value=spec.feature(key).default)
        elif rf.dtype == tf.string:
            out[key] = tf.io.FixedLenFeature([], tf.string, default_value=PAD)
        elif rf.dtype == tf.int64:
            out[key] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        else:
            out[key] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0 if rf.role == "weight" else 0.0)
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
