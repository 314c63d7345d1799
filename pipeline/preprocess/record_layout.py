"""The record layout as plain, TensorFlow-free data that Beam workers can unpickle cheaply.

`feature_specs.derive.record_fields` is THE definition of the tf.Example layout; it lives next to TensorFlow,
so the driver turns it into `FieldPlan`s (which also say which joined-row column feeds each key) and ships
those to the workers, which then never import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from feature_specs.schema import Feature, FeatureSpec

WIRE_BYTES, WIRE_FLOAT, WIRE_INT64 = "bytes", "float", "int64"


@dataclass(frozen=True)
class FieldPlan:
    """One key of the written tf.train.Example and where its value comes from."""

    key: str
    wire: str  # bytes | float | int64
    varlen: bool
    role: str  # feature | label | group_key | weight | timestamp
    column: int  # index into the joined row (spec.all_columns)
    feature: Feature | None = None


def record_group(fp: FieldPlan) -> int:
    """Record order groups fields by encoding (protobuf map entries may come in any order)."""
    if fp.wire == WIRE_BYTES and not fp.varlen:
        return 0
    return {WIRE_FLOAT: 1, WIRE_INT64: 3}.get(fp.wire, 2)


def record_layout(spec: FeatureSpec) -> tuple[FieldPlan, ...]:
    """FieldPlans of derive.record_fields, grouped: single bytes, floats, sequences, int64s.

    Records are tuples in this order; grouping lets the encoder handle each group in one tight loop.
    Imports TensorFlow: call it in the driver only."""
    import tensorflow as tf

    from feature_specs.derive import record_fields

    cols = {c: i for i, c in enumerate(spec.all_columns)}
    wire = {tf.string: WIRE_BYTES, tf.float32: WIRE_FLOAT, tf.int64: WIRE_INT64}
    source = {spec.label.name: spec.label.source, spec.group_key: spec.group_key, spec.weight: spec.weight,
              spec.timestamp: spec.timestamp}
    out = []
    for key, rf in record_fields(spec).items():
        feature = spec.feature(key) if rf.role == "feature" else None
        column = cols[feature.source if feature is not None else source[key]]
        out.append(FieldPlan(key, wire[rf.dtype], rf.varlen, rf.role, column, feature))
    return tuple(sorted(out, key=record_group))
