"""Row validation: every raw line becomes either a typed record or a dead-letter rejection with a reason.

Nothing crashes the job and nothing is dropped silently: each rejection carries the raw line (decoded with
replacement), its file, a reason from REASONS and a human detail, and is counted with a Beam Metrics counter.
Missing values the spec allows (format.missing_values) are not errors: they become absent features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import apache_beam as beam

from feature_specs.schema import FeatureSpec
from pipeline.preprocess.counting import global_value
from pipeline.preprocess.log_reader import split_fields
from pipeline.preprocess.record_layout import BYTES, BYTES_LIST, FLOAT, INT64, RecordLayout, kind_of, tuple_getter
from pipeline.preprocess.train_eval_split import SplitToken

REJECTED = "rejected"
REASONS: tuple[str, ...] = (
    "empty_line",         # a blank line
    "invalid_encoding",   # bytes not decodable in spec.format.encoding
    "column_count",       # wrong number of fields for format.columns
    "oversized_field",    # a field longer than --max-field-chars
    "join_miss",          # a side-table key absent from that table
    "missing_label",      # label column empty / a missing value
    "bad_label",          # label not a number, or not 0/1 when no threshold is declared
    "bad_number",         # numeric feature or weight not a finite number
    "bad_int",            # dtype: int categorical / sequence token not an integer
    "bad_timestamp",      # timestamp not an integer
    "missing_timestamp",  # time-based split but no timestamp
    "missing_group_key",  # group key (user id) empty: needed for the split and per-user metrics
)


class Reject(Exception):
    """Raised inside a converter; turned into a dead-letter record by the DoFn."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def rejection(file: str, line: str, reason: str, detail: str) -> str:
    """The dead-letter JSON line (DIR/rejected/*.jsonl)."""
    return json.dumps({"file": file, "line": line, "reason": reason, "detail": detail}, ensure_ascii=False)


def reason_of(rejected_json: str) -> str:
    return json.loads(rejected_json)["reason"]


def _is_int(v: str) -> bool:
    return v.isascii() and (v[1:] if v[:1] in "+-" else v).isdigit()


class LineParser:
    """raw bytes -> list of string fields (decoding, empty lines, column count)."""

    def __init__(self, spec: FeatureSpec):
        self.encoding = spec.format.encoding
        self.delimiter = spec.format.delimiter
        self.ncols = len(spec.format.columns)

    def parse(self, raw: bytes) -> tuple[str, list[str]]:
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise Reject("invalid_encoding", f"not valid {self.encoding} at byte {e.start}: {e.reason}") from None
        if not text.strip():
            raise Reject("empty_line", "blank line")
        fields = split_fields(text, self.delimiter)
        if len(fields) != self.ncols:
            raise Reject("column_count", f"expected {self.ncols} columns separated by {self.delimiter!r}, "
                         f"got {len(fields)}")
        return text, fields


class RowConverter:
    """joined string fields -> (split token, record tuple in `layout` order).

    The converter fills the record kinds it knows how to parse from text (single strings, single floats, string
    lists, single int64s); the layout groups them in that order (record_layout.KIND_ORDER), so each kind is
    converted by one list comprehension and the record is their concatenation. A failure re-checks field by
    field for the reason."""

    FILLS = (BYTES, FLOAT, BYTES_LIST, INT64)  # a prefix of KIND_ORDER: the record is their concatenation

    def __init__(self, spec: FeatureSpec, layout: RecordLayout, max_field_chars: int):
        self.columns = spec.all_columns
        self.missing = frozenset(spec.format.missing_values)
        self.max_field_chars = max_field_chars
        self.joined = bool(spec.side_tables)  # side-table columns appended: fields not all from the line's text
        self.label = spec.label
        self.group_col = self.columns.index(spec.group_key) if spec.group_key else None
        self.needs_ts = spec.split.method.startswith("time")
        self.split_token = SplitToken(spec.split)
        for rf in layout.fields:
            if kind_of(rf) not in self.FILLS:
                raise ValueError(f"record field {rf.key!r}: RowConverter cannot parse a {rf.wire} "
                                 f"{'list' if rf.varlen else 'value'} from text (it fills {self.FILLS})")
        spans = [layout.kind(k) for k in self.FILLS]
        if [i for r in spans for i in r] != list(range(len(layout))):
            raise ValueError(f"record fields are not grouped in the order {self.FILLS}: use record_layout()")
        strs, floats, seqs, ints = ([(layout.fields[i], layout.columns[i], layout.features[i]) for i in r]
                                    for r in spans)
        self.str_cols = [col for _, col, _ in strs]
        self.int_pos = [i for i, (_, _, f) in enumerate(strs) if f is not None and f.dtype == "int"]
        self.float_cols = [col for _, col, _ in floats]
        self._get_strs, self._get_floats = tuple_getter(self.str_cols), tuple_getter(self.float_cols)
        if layout.role("label") is None:
            raise ValueError(f"the record layout {layout.keys} has no label field")
        self.label_pos = layout.role("label") - spans[1].start
        self.seqs = [(col, f.delimiter, rf.max_length, f.dtype == "int") for rf, col, f in seqs]
        self.int_cols = [(col, rf.role == "timestamp") for rf, col, _ in ints]
        ts = layout.role("timestamp")
        self.ts_pos = None if ts is None else ts - spans[3].start

    def convert(self, fields: Sequence[str], text: str) -> tuple[float, tuple]:
        limit = self.max_field_chars  # a field split from `text` is no longer than it: one len() suffices
        if limit and (self.joined or len(text) > limit) and max(map(len, fields)) > limit:
            i = max(range(len(fields)), key=lambda j: len(fields[j]))
            raise Reject("oversized_field", f"column {self.columns[i]!r} has {len(fields[i])} characters "
                         f"(limit {self.max_field_chars})")
        missing = self.missing
        group = None
        if self.group_col is not None:
            group = fields[self.group_col].strip()
            if group in missing:
                raise Reject("missing_group_key", f"group key column {self.columns[self.group_col]!r} is empty")
        strs = [None if v in missing else v for v in map(str.strip, self._get_strs(fields))]
        for i in self.int_pos:
            v = strs[i]
            if v is not None and not _is_int(v):
                raise Reject("bad_int", f"column {self.columns[self.str_cols[i]]!r}: {v!r} is not an integer "
                             f"(dtype: int)")
        raw = list(map(str.strip, self._get_floats(fields)))
        label = raw[self.label_pos]
        if label in missing:
            raise Reject("missing_label", f"label column {self.columns[self.float_cols[self.label_pos]]!r} is "
                         f"missing")
        raw[self.label_pos] = "0"
        try:
            floats = [None if v in missing else float(v) for v in raw]
            ok = math.isfinite(math.fsum(filter(None, floats)))  # filter(None) drops None (and zeros)
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            self._number_error(raw)
        floats[self.label_pos] = self._label(label, self.columns[self.float_cols[self.label_pos]])
        seqs = []
        for col, delim, max_len, is_int in self.seqs:
            v = fields[col]
            tokens = [t for t in map(str.strip, v.split(delim)) if t and t not in missing] if v else []
            if is_int:
                bad = next((t for t in tokens if not _is_int(t)), None)
                if bad is not None:
                    raise Reject("bad_int", f"column {self.columns[col]!r}: token {bad!r} is not an integer "
                                 f"(dtype: int)")
            seqs.append(tuple(tokens[-max_len:]))
        ints = []
        for col, is_ts in self.int_cols:  # usually none, or the timestamp
            v = fields[col].strip()
            if v in missing:
                if is_ts and self.needs_ts:
                    raise Reject("missing_timestamp", f"column {self.columns[col]!r} is missing but the "
                                 f"split is time-based")
                ints.append(None)
            else:
                ints.append(self._integer(v, self.columns[col], is_ts))
        ts = None if self.ts_pos is None else ints[self.ts_pos]
        return self.split_token(group, text, ts), (*strs, *floats, *seqs, *ints)

    def _number_error(self, raw: Sequence[str]) -> None:
        for col, v in zip(self.float_cols, raw):
            if v in self.missing:
                continue
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                raise Reject("bad_number", f"column {self.columns[col]!r}: {v!r} is not a finite number")

    def _label(self, v: str, col: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise Reject("bad_label", f"label column {col!r}: {v!r} is not a number") from None
        if not math.isfinite(x):
            raise Reject("bad_label", f"label column {col!r}: {v!r} is not finite")
        t = self.label.threshold
        if t is None:
            if x not in (0.0, 1.0):
                raise Reject("bad_label", f"label column {col!r}: {v!r} is not 0/1 (declare label.threshold "
                             f"to binarise a rating)")
            return x
        return 1.0 if (x >= t if self.label.op == ">=" else x > t) else 0.0

    @staticmethod
    def _integer(v: str, col: str, is_ts: bool) -> int:
        """An int64 field's value ("1.7e9" is accepted when it is a whole number)."""
        if _is_int(v):
            return int(v)
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not x.is_integer():
            raise Reject("bad_timestamp" if is_ts else "bad_int", f"column {col!r}: {v!r} is not an integer"
                         + (" timestamp" if is_ts else ""))
        return int(x)


class _Rejecting(beam.DoFn):
    """Shared dead-letter plumbing: a Metrics counter per reason and the rejected side output."""

    def setup(self):
        self._counters = {}

    def reject(self, file: str, text: str, r: Reject):
        c = self._counters.get(r.reason)
        if c is None:
            c = self._counters[r.reason] = beam.metrics.Metrics.counter("preprocess", f"rejected_{r.reason}")
        c.inc()
        return beam.pvalue.TaggedOutput(REJECTED, rejection(file, text, r.reason, r.detail))


class _CountingRows(_Rejecting):
    """Counts the lines it reads per bundle (emitted on the "counts" output as ("rows_in", n))."""

    COUNTS = "counts"

    def start_bundle(self):
        self._rows_in = 0

    def _parse(self, file: str, raw: bytes):
        """Count the line and parse it: ((text, fields), None), or (None, its dead-letter output)."""
        self._rows_in += 1
        try:
            return self._parser.parse(raw), None
        except Reject as r:
            return None, self.reject(file, raw.decode(self._parser.encoding, errors="replace"), r)

    def finish_bundle(self):
        if self._rows_in:
            beam.metrics.Metrics.counter("preprocess", "rows_in").inc(self._rows_in)
            yield beam.pvalue.TaggedOutput(self.COUNTS, global_value(("rows_in", self._rows_in)))
        self._rows_in = 0


class ParseLines(_CountingRows):
    """(file, raw bytes) -> (file, text, fields); undecodable / empty / wrong-width lines are rejected."""

    def __init__(self, spec: FeatureSpec):
        self._parser = LineParser(spec)

    def process(self, element):
        file, raw = element
        parsed, rejected = self._parse(file, raw)
        yield rejected if parsed is None else (file, *parsed)


class ValidateRows(_Rejecting):
    """(file, text, joined fields) -> (split token, record); type errors are rejected with their reason."""

    def __init__(self, spec: FeatureSpec, layout: RecordLayout, max_field_chars: int):
        self._args = (spec, layout, max_field_chars)
        self._conv: RowConverter | None = None

    def setup(self):
        super().setup()
        self._conv = RowConverter(*self._args)

    def process(self, element):
        file, text, fields = element
        try:
            yield self._conv.convert(fields, text)
        except Reject as r:
            yield self.reject(file, text, r)


class ParseAndValidateLines(_CountingRows):
    """ParseLines + ValidateRows in one step, for specs without side tables (one DoFn call per row)."""

    def __init__(self, spec: FeatureSpec, layout: RecordLayout, max_field_chars: int):
        self._parser = LineParser(spec)
        self._args = (spec, layout, max_field_chars)

    def setup(self):
        super().setup()
        self._conv = RowConverter(*self._args)

    def process(self, element):
        file, raw = element
        parsed, rejected = self._parse(file, raw)
        if parsed is None:
            yield rejected
            return
        text, fields = parsed
        try:
            yield self._conv.convert(fields, text)
        except Reject as r:
            yield self.reject(file, text, r)
