"""Where each field sits in the record tuples the Beam job passes from validation to encoding.

Records are plain tuples (cheap to build, pickle and index), but no step hard-codes their order: each asks
the one RecordLayout by key, role or kind. The fields come from `feature_specs.example_fields.record_fields`
(plain data, so neither the driver nor the workers import TensorFlow). The layout groups them by kind, i.e.
(wire type, list or single value), in KIND_ORDER and in spec order within a kind, so the converter builds a
record by concatenating one list per kind and the encoder handles each kind in one tight loop. The record
order is also the order of the values negative sampling hashes (`negative_sampling.row_key`): it is the
order records had before they were addressed by name, and changing KIND_ORDER would change which negatives a
given seed keeps (tests/test_preprocess_units.py pins it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any

from feature_specs.example_fields import WIRE_BYTES, WIRE_FLOAT, WIRE_INT64, RecordField, record_fields
from feature_specs.schema import Feature, FeatureSpec

Kind = tuple[str, bool]  # (wire type, varlen)
BYTES, FLOAT, INT64 = (WIRE_BYTES, False), (WIRE_FLOAT, False), (WIRE_INT64, False)
BYTES_LIST, FLOAT_LIST, INT64_LIST = (WIRE_BYTES, True), (WIRE_FLOAT, True), (WIRE_INT64, True)
KIND_ORDER: tuple[Kind, ...] = (BYTES, FLOAT, BYTES_LIST, INT64, FLOAT_LIST, INT64_LIST)


def kind_of(rf: RecordField) -> Kind:
    return (rf.wire, rf.varlen)


def tuple_getter(positions: Sequence[int]) -> Callable[[Sequence], tuple]:
    """The values at `positions` as a tuple, gathered in C (itemgetter of one index returns the bare item)."""
    idx = tuple(positions)
    if len(idx) == 1:
        return lambda s: (s[idx[0]],)
    return itemgetter(*idx) if idx else (lambda s: ())


class RecordLayout:
    """The record fields in record order, the joined-row column feeding each, and their spec Features."""

    def __init__(self, fields: Iterable[RecordField], columns: Sequence[str],
                 features: Mapping[str, Feature] | None = None):
        features = features or {}
        self.fields: tuple[RecordField, ...] = tuple(sorted(fields, key=lambda rf: KIND_ORDER.index(kind_of(rf))))
        col_index = {c: i for i, c in enumerate(columns)}
        for rf in self.fields:
            if rf.source not in col_index:
                raise ValueError(f"record field {rf.key!r}: its source column {rf.source!r} is not a column of the "
                                 f"joined row {tuple(columns)}")
            if rf.role == "feature" and rf.key not in features:
                raise ValueError(f"record field {rf.key!r} has role 'feature' but no Feature was given for it")
        self.column_names = tuple(columns)
        self.columns: tuple[int, ...] = tuple(col_index[rf.source] for rf in self.fields)
        self.features: tuple[Feature | None, ...] = tuple(features.get(rf.key) if rf.role == "feature" else None
                                                           for rf in self.fields)
        self._index = {rf.key: i for i, rf in enumerate(self.fields)}
        if len(self._index) != len(self.fields):
            raise ValueError(f"record fields repeat a key: {[rf.key for rf in self.fields]}")

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Iterator[RecordField]:
        return iter(self.fields)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(rf.key for rf in self.fields)

    def index(self, key: str) -> int:
        """Position of record field `key` in a record."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no record field {key!r}; the record has {self.keys}") from None

    def role(self, role: str) -> int | None:
        """Position of the (first) field with this role, or None when the spec has none."""
        return next((i for i, rf in enumerate(self.fields) if rf.role == role), None)

    def kind(self, kind: Kind) -> range:
        """Positions of the fields of one kind (contiguous: records are grouped by kind)."""
        pos = [i for i, rf in enumerate(self.fields) if kind_of(rf) == kind]
        return range(pos[0], pos[-1] + 1) if pos else range(0)

    def as_dict(self, record: Sequence) -> dict[str, Any]:
        """A record by key (for tests and debugging; the hot path indexes tuples)."""
        if len(record) != len(self.fields):
            raise ValueError(f"record has {len(record)} values, the layout {len(self.fields)} fields {self.keys}")
        return dict(zip(self.keys, record))


def record_layout(spec: FeatureSpec) -> RecordLayout:
    """The layout of a spec's records (TensorFlow-free: safe in the Beam driver and workers)."""
    return RecordLayout(record_fields(spec).values(), spec.all_columns, {f.name: f for f in spec.features})
