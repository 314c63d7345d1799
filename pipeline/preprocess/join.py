"""Join side tables (user / item attributes) onto the main rows inside the pipeline.

Small tables travel as a side input (a dict broadcast to every worker, no shuffle of the main rows); large
ones are joined with CoGroupByKey. A main row whose key is absent from a side table is REJECTED with reason
"join_miss" (not filled with missing values): a miss almost always means a broken key format or a stale
table, and a counted rejection surfaces that, whereas filling would silently train on attribute-less rows.
Side-table rows with the wrong width, and duplicate keys (the first row in sorted order wins), are counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from feature_specs.schema import FeatureSpec, SideTable
from pipeline.preprocess.log_reader import read_table_lines, split_fields
from pipeline.preprocess.validate import Reject, _Rejecting

SIDE_INPUT, COGROUP = "side_input", "cogroup"


def appended_columns(spec: FeatureSpec) -> list[tuple[SideTable, list[int]]]:
    """Per side table, the indices of its columns appended to the main row (spec.all_columns order)."""
    seen = set(spec.format.columns)
    out = []
    for t in spec.side_tables:
        idx = []
        for i, c in enumerate(t.columns):
            if c != t.key and c not in seen:
                seen.add(c)
                idx.append(i)
        out.append((t, idx))
    return out


class ParseTable(beam.DoFn):
    """A side table file -> (key, appended values); malformed rows are counted, not joined."""

    def __init__(self, table: SideTable, keep: Sequence[int]):
        self._table, self._keep = table, tuple(keep)
        self._key_index = table.columns.index(table.key)

    def process(self, path):
        t = self._table
        bad = beam.metrics.Metrics.counter("preprocess", f"side_table_bad_row_{t.name}")
        for raw in read_table_lines(path, t.header):
            fields = split_fields(raw.decode(t.encoding, errors="replace"), t.delimiter)
            if len(fields) != len(t.columns):
                bad.inc()
                yield beam.pvalue.TaggedOutput("bad", f"{t.name}: {len(fields)} columns, expected {len(t.columns)}")
                continue
            yield fields[self._key_index].strip(), tuple(fields[i] for i in self._keep)


def _first(kv):
    key, rows = kv
    rows = sorted(rows)
    return key, rows[0]


class ReadSideTable(beam.PTransform):
    """path -> {"rows": (key, values) unique by key, "bad": descriptions of malformed rows}."""

    def __init__(self, table: SideTable, keep: Sequence[int], path: str):
        super().__init__()
        self._table, self._keep, self._path = table, keep, path

    def expand(self, pbegin):
        parsed = (pbegin | "Path" >> beam.Create([self._path])
                  | "Parse" >> beam.ParDo(ParseTable(self._table, self._keep)).with_outputs("bad", main="rows"))
        rows = parsed.rows | "GroupKey" >> beam.GroupByKey() | "FirstPerKey" >> beam.Map(_first)
        return {"rows": rows, "bad": parsed.bad}


class _JoinWithDict(_Rejecting):
    def __init__(self, table: SideTable, key_index: int):
        self._name, self._key_index = table.name, key_index

    def process(self, element, table):
        file, text, fields = element
        key = fields[self._key_index].strip()
        values = table.get(key)
        if values is None:
            yield self.reject(file, text, Reject("join_miss", f"{self._name}: key {key!r} not in the table"))
            return
        yield file, text, [*fields, *values]


class _JoinGrouped(_Rejecting):
    def __init__(self, table: SideTable):
        self._name = table.name

    def process(self, element):
        key, grouped = element
        side = sorted(grouped["side"])
        for file, text, fields in grouped["main"]:
            if not side:
                yield self.reject(file, text, Reject("join_miss", f"{self._name}: key {key!r} not in the table"))
            else:
                yield file, text, [*fields, *side[0]]


def _keyed(key_index: int):
    return lambda row: (row[2][key_index].strip(), row)


class JoinSideTable(beam.PTransform):
    """(file, text, fields) rows -> the same with the table's columns appended; misses are rejected."""

    def __init__(self, table: SideTable, key_index: int, method: str):
        super().__init__()
        self._table, self._key_index, self._method = table, key_index, method

    def expand(self, inputs):
        rows, table = inputs
        if self._method == SIDE_INPUT:
            return rows | "JoinDict" >> beam.ParDo(
                _JoinWithDict(self._table, self._key_index), table=beam.pvalue.AsDict(table)
            ).with_outputs("rejected", main="rows")
        keyed = rows | "KeyMain" >> beam.Map(_keyed(self._key_index))
        return ({"main": keyed, "side": table} | "CoGroup" >> beam.CoGroupByKey()
                | "JoinGrouped" >> beam.ParDo(_JoinGrouped(self._table)).with_outputs("rejected", main="rows"))
