"""The keys and wire types of the tf.train.Example records preprocessing writes, as plain data (no TensorFlow).

This is THE definition of the record layout: the Beam job fills and encodes records from it without importing
TensorFlow (its workers stay light), and `feature_specs.derive.parse_spec` maps the same fields to tf.io parse
features for training, eval and serving. The Beam job dispatches on (wire type, list or single) and role, never
on positions: its encoder writes all six pairs, and its converter names any field whose pair it cannot parse
from text yet (float and int64 lists), so a new spec kind is declared here and, if it needs new text parsing
or statistics, taught to `pipeline/preprocess/validate.py` and `analyze.py`.

Per spec entry:
- categorical feature: bytes, one value (the cleaned raw token; absent when missing -> parsed as PAD "").
- numeric feature: float, one value (absent when missing -> parsed as the feature's default).
- sequence feature: bytes, 0..max_length values (the most recent max_length kept).
- label: float 0/1 under the label's name; group key: bytes; weight: float (absent -> 1.0); timestamp: int64.
"""

from __future__ import annotations

from dataclasses import dataclass

from feature_specs.schema import FeatureSpec

PAD = ""  # the padding / missing token for string inputs; it maps to the OOV / mask slot

WIRE_BYTES, WIRE_FLOAT, WIRE_INT64 = "bytes", "float", "int64"  # tf.train.Feature's BytesList/FloatList/Int64List
WIRES: tuple[str, ...] = (WIRE_BYTES, WIRE_FLOAT, WIRE_INT64)
ROLES: tuple[str, ...] = ("feature", "label", "group_key", "weight", "timestamp")


@dataclass(frozen=True)
class RecordField:
    """One key of the tf.train.Example the preprocessing writes, and where its value comes from.

    `varlen` fields hold 0..max_length values (absent when empty); the others exactly one value, and an absent
    one is read back as `default`."""

    key: str
    wire: str  # bytes | float | int64
    varlen: bool
    role: str  # feature | label | group_key | weight | timestamp
    source: str  # the joined-row column (spec.all_columns) the value is read from
    default: str | float | int | None = None  # parse default when absent (None for varlen fields)
    max_length: int = 0  # varlen only: the most values kept (0 = no limit)

    def __post_init__(self):
        if self.wire not in WIRES:
            raise ValueError(f"record field {self.key!r}: wire type {self.wire!r} is not one of {WIRES}")
        if self.role not in ROLES:
            raise ValueError(f"record field {self.key!r}: role {self.role!r} is not one of {ROLES}")


def record_fields(spec: FeatureSpec) -> dict[str, RecordField]:
    """The keys, wire types and parse defaults of the examples written by preprocessing, in spec order."""
    out: dict[str, RecordField] = {}
    for f in spec.features:
        if f.kind == "numeric":
            out[f.name] = RecordField(f.name, WIRE_FLOAT, False, "feature", f.source, float(f.default))
        elif f.kind == "sequence":
            out[f.name] = RecordField(f.name, WIRE_BYTES, True, "feature", f.source, None, f.max_length)
        else:
            out[f.name] = RecordField(f.name, WIRE_BYTES, False, "feature", f.source, PAD)
    label = spec.label
    out[label.name] = RecordField(label.name, WIRE_FLOAT, False, "label", label.source, 0.0)
    if spec.group_key is not None and spec.group_key not in out:
        out[spec.group_key] = RecordField(spec.group_key, WIRE_BYTES, False, "group_key", spec.group_key, PAD)
    if spec.weight is not None:
        out[spec.weight] = RecordField(spec.weight, WIRE_FLOAT, False, "weight", spec.weight, 1.0)
    if spec.timestamp is not None and spec.timestamp not in out:
        out[spec.timestamp] = RecordField(spec.timestamp, WIRE_INT64, False, "timestamp", spec.timestamp, 0)
    return out
