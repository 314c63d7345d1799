"""Unit tests of the preprocessing transforms: encoder bytes, every rejection reason, split, analysis, join."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from google.protobuf.internal import api_implementation

from feature_specs.derive import parse_spec
from feature_specs.example_fields import RecordField, record_fields
from feature_specs.loader import spec_from_dict
from feature_specs.schema import Split
from pipeline.preprocess.analyze import AnalyzeTrain, finalize_vocab, merge_moments, moments_of
from pipeline.preprocess.counting import CountKeys, constant_key
from pipeline.preprocess.encode import ExampleEncoder, varint, wire_order
from pipeline.preprocess.join import COGROUP, SIDE_INPUT, JoinSideTable, ReadSideTable, appended_columns
from pipeline.preprocess.record_layout import RecordLayout, record_layout
from pipeline.preprocess.train_eval_split import AssignSplit, hash_fraction, time_cutoff
from pipeline.preprocess.validate import REASONS, REJECTED, LineParser, ParseAndValidateLines, Reject, RowConverter, \
    reason_of

REPO = Path(__file__).resolve().parents[1]
RAW = {
    "name": "tiny",
    "format": {"delimiter": ",", "header": False,
               "columns": ["clk", "user_id", "ad", "city", "price", "age", "hist", "ts", "w"]},
    "label": {"name": "clk"},
    "group_key": "user_id", "timestamp": "ts", "weight": "w",
    "split": {"method": "hash_group", "eval_fraction": 0.5, "seed": 3},
    "features": [
        {"name": "user_id", "kind": "categorical", "side": "user"},
        {"name": "ad", "kind": "categorical", "side": "item", "vocab": {"min_count": 2, "top_k": 2}},
        {"name": "city", "kind": "categorical", "side": "user", "dtype": "int"},
        {"name": "price", "kind": "numeric", "side": "item"},
        {"name": "age", "kind": "numeric", "side": "user", "transform": "bucketize", "num_buckets": 4},
        {"name": "hist", "kind": "sequence", "side": "user", "max_length": 3, "shares_embedding_with": "ad"},
    ],
}


def runner_pipeline():
    return test_pipeline.TestPipeline(runner="FnApiRunner")


@pytest.fixture(scope="module")
def spec():
    return spec_from_dict(RAW)


@pytest.fixture(scope="module")
def layout(spec):
    return record_layout(spec)


# ---- record layout and encoder ------------------------------------------------------------------------

def proto_example(layout, record) -> tf.train.Example:
    """The same record built with the protobuf API, field by field from the layout's wire types."""
    feats = {}
    for rf in layout.fields:
        v = layout.as_dict(record)[rf.key]
        if v is None or (rf.varlen and not v):
            continue
        vals = list(v) if rf.varlen else [v]
        if rf.wire == "float":
            feats[rf.key] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
        elif rf.wire == "int64":
            feats[rf.key] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
        else:
            feats[rf.key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() for x in vals]))
    return tf.train.Example(features=tf.train.Features(feature=feats))


def test_varint_matches_protobuf():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2 ** 35, 2 ** 63 - 1):
        msg = tf.train.Int64List(value=[n]).SerializeToString()
        assert msg == b"\x0a" + bytes([len(varint(n))]) + varint(n)


def test_layout_is_addressed_by_name(spec, layout):
    assert set(layout.keys) == set(record_fields(spec)) and len(layout) == 9
    # grouped by kind; this order is what negative sampling hashes (row_key), so it must not drift
    assert layout.keys == ("user_id", "ad", "city", "price", "age", "clk", "w", "hist", "ts")
    assert layout.fields[layout.index("clk")].role == "label" and layout.role("label") == layout.index("clk")
    assert layout.fields[layout.index("hist")].max_length == 3
    assert layout.column_names[layout.columns[layout.index("w")]] == "w"
    with pytest.raises(KeyError, match="no record field 'nope'"):
        layout.index("nope")
    with pytest.raises(ValueError, match="record has 2 values"):
        layout.as_dict(("a", 1.0))
    with pytest.raises(ValueError, match="source column 'gone'"):
        RecordLayout([RecordField("x", "float", False, "weight", "gone")], ("a",))
    with pytest.raises(ValueError, match="wire type 'double'"):
        RecordField("x", "double", False, "weight", "x")


def test_converter_refuses_a_kind_it_cannot_parse(spec):
    fields = [*record_fields(spec).values(), RecordField("scores", "float", True, "weight", "w")]
    with pytest.raises(ValueError, match="'scores': RowConverter cannot parse a float list"):
        RowConverter(spec, RecordLayout(fields, spec.all_columns, {f.name: f for f in spec.features}), 100)


def test_encoder_bytes_equal_deterministic_protobuf_and_parse_back(spec, layout):
    conv = RowConverter(spec, layout, 1000)
    rows = ["1,u1,a1,7,1.5,20,a1|a2|a3|a4,100,2.0",
            "0,u2,,NULL,,,,-5,",                              # everything optional missing, negative int64
            f"1,ü{'x' * 300},{'b' * 120},3,-0.25,1e3,{'z' * 200}|ß,{2 ** 40},"]  # long + non-ASCII values
    records = [conv.convert(r.split(","), r)[1] for r in rows]
    assert list(wire_order(layout.keys)) != list(layout.keys)  # so the encoder really reorders
    enc = ExampleEncoder(layout)
    blobs = [enc.encode(r) for r in records]
    for blob, rec in zip(blobs, records):
        assert blob == proto_example(layout, rec).SerializeToString(deterministic=True)
    parsed = tf.io.parse_example(blobs, parse_spec(spec))
    assert [x.decode() for x in parsed["user_id"].numpy()] == ["u1", "u2", f"ü{'x' * 300}"]
    assert [x.decode() for x in parsed["ad"].numpy()] == ["a1", "", "b" * 120]
    assert parsed["hist"].to_list() == [[b"a2", b"a3", b"a4"], [], [b"z" * 200, "ß".encode()]]
    np.testing.assert_allclose(parsed["price"].numpy(), [1.5, 0.0, -0.25])
    np.testing.assert_allclose(parsed["w"].numpy(), [2.0, 1.0, 1.0])  # weight absent -> 1.0
    assert parsed["ts"].numpy().tolist() == [100, -5, 2 ** 40]
    assert parsed["clk"].numpy().tolist() == [1.0, 0.0, 1.0]


@pytest.mark.skipif(api_implementation.Type() != "upb", reason="prefix keys follow upb's order (see wire_order)")
def test_encoder_every_kind_and_prefix_keys_byte_identical():
    """All six (wire, list) kinds, keys that are prefixes of others ("a" < "ab" < "abc" on bytes) and a non-ASCII
    key: the order and bytes of protobuf's deterministic serialization (roles do not matter to the encoder)."""
    kinds = {"ab": ("bytes", False), "abc": ("float", False), "a": ("bytes", True), "é": ("int64", False),
             "b": ("float", True), "a_": ("int64", True)}
    layout = RecordLayout([RecordField(k, w, varlen, "weight", "c") for k, (w, varlen) in kinds.items()], ("c",))
    assert wire_order(["a", "ab", "abc", "b"]) == ["abc", "ab", "a", "b"]
    enc = ExampleEncoder(layout)
    full = {"ab": "x" * 130, "abc": 0.5, "a": ("t", "ü" * 70), "é": -(2 ** 40), "b": (1.5, -2.0),
            "a_": (0, 300, -1)}
    empty = {"ab": None, "abc": None, "a": (), "é": None, "b": (), "a_": ()}
    for values in (full, empty):
        record = tuple(values[k] for k in layout.keys)
        assert enc.encode(record) == proto_example(layout, record).SerializeToString(deterministic=True)


def test_preprocessing_never_imports_tensorflow():
    """The Beam driver and workers read the record layout as plain data: building the layout, validating and
    encoding a row in a fresh interpreter leaves TensorFlow unloaded."""
    code = ("import sys; import pipeline.preprocess.preprocess_job; from feature_specs.loader import load_spec; "
            "from pipeline.preprocess.record_layout import record_layout; "
            "from pipeline.preprocess.validate import RowConverter; "
            "from pipeline.preprocess.encode import ExampleEncoder; "
            "spec = load_spec('synthetic'); layout = record_layout(spec); "
            "row = ['7', '1', *(['3'] * (len(spec.all_columns) - 2))]; "
            "blob = ExampleEncoder(layout).encode(RowConverter(spec, layout, 100).convert(row, ','.join(row))[1]); "
            "print(len(blob) > 100, 'tensorflow' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False"], res.stdout


# ---- validation: every rejection reason ---------------------------------------------------------------

BAD = {
    "empty_line": b"",
    "invalid_encoding": b"1,u1,a\xff,7,1,2,,100,1",
    "column_count": b"1,u1,a1,7,1,2",
    "oversized_field": b"1,u1," + b"a" * 60 + b",7,1,2,,100,1",
    "missing_label": b",u1,a1,7,1,2,,100,1",
    "bad_label": b"2,u1,a1,7,1,2,,100,1",
    "bad_number": b"1,u1,a1,7,abc,2,,100,1",
    "bad_int": b"1,u1,a1,7x,1,2,,100,1",
    "bad_timestamp": b"1,u1,a1,7,1,2,,1.5,1",
    "missing_group_key": b"1,NULL,a1,7,1,2,,100,1",
}


def convert_raw(spec, layout, raw: bytes):
    text, fields = LineParser(spec).parse(raw)
    return RowConverter(spec, layout, 50).convert(fields, text)


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_rejection_reason(spec, layout, reason):
    with pytest.raises(Reject) as e:
        convert_raw(spec, layout, BAD[reason])
    assert e.value.reason == reason and e.value.reason in REASONS


def test_other_reasons(spec, layout):
    for line, reason in ((b"1,u1,a1,7,inf,2,,100,1", "bad_number"), (b"1,u1,a1,7,1,2,a|b,100,nan", "bad_number"),
                         (b"x,u1,a1,7,1,2,,100,1", "bad_label")):
        with pytest.raises(Reject, match=reason):
            convert_raw(spec, layout, line)
    timed = spec_from_dict({**RAW, "split": {"method": "time_fraction"}})
    with pytest.raises(Reject, match="missing_timestamp"):
        convert_raw(timed, record_layout(timed), b"1,u1,a1,7,1,2,,,1")
    rated = spec_from_dict({**RAW, "label": {"name": "clk", "threshold": 4, "op": ">"}})
    assert record_layout(rated).as_dict(convert_raw(rated, record_layout(rated), b"4.5,u1,a,1,1,2,,1,1")[1])[
        "clk"] == 1.0


def test_missing_values_are_not_errors(spec, layout):
    token, rec = convert_raw(spec, layout, b'0,u9,NULL,, ,,NULL|a||b,NULL,')
    d = layout.as_dict(rec)
    assert d["ad"] is None and d["city"] is None and d["price"] is None and d["ts"] is None and d["w"] is None
    assert d["hist"] == ("a", "b") and d["user_id"] == "u9"
    assert token == hash_fraction(3, "u9")


def test_parse_and_validate_dofn_dead_letters_everything(spec, layout):
    good = b"1,u1,a1,7,1.5,20,a1|a2,100,1"
    lines = [("f.csv", good)] + [("f.csv", raw) for raw in BAD.values()]
    with runner_pipeline() as p:
        out = (p | beam.Create(lines)
               | beam.ParDo(ParseAndValidateLines(spec, layout, 50)).with_outputs(REJECTED, "counts",
                                                                                   main="records"))
        assert_that(out.records | beam.Map(lambda tr: layout.as_dict(tr[1])["user_id"]), equal_to(["u1"]))
        assert_that(out[REJECTED] | "Reason" >> beam.Map(reason_of), equal_to(sorted(BAD)), label="reasons")
        assert_that(out["counts"] | beam.CombinePerKey(sum), equal_to([("rows_in", 1 + len(BAD))]),
                    label="rows_in")


# ---- split --------------------------------------------------------------------------------------------

def test_hash_fraction_is_stable_and_uniform():
    assert hash_fraction(0, "user-1") == hash_fraction(0, "user-1") != hash_fraction(1, "user-1")
    assert 0.45 < np.mean([hash_fraction(0, str(i)) < 0.5 for i in range(4000)]) < 0.55


def test_time_cutoff_rules():
    counts = {m: 10 for m in range(100)}  # minutes 0..99, 10 rows each
    assert time_cutoff(counts, Split("time_fraction", 0.1)) == 90 * 60
    day = 86400 // 60
    assert time_cutoff({5: 1, day + 3: 1, 2 * day + 7: 4}, Split("time_last_day", 0.1)) == 2 * 86400


def test_assign_split_time_fraction():
    with runner_pipeline() as p:
        parts = (p | beam.Create([(ts, (ts,)) for ts in range(0, 6000, 60)])
                 | AssignSplit(Split("time_fraction", 0.2)))
        assert_that(parts["eval"], equal_to([(ts,) for ts in range(4800, 6000, 60)]), label="eval")
        assert_that(parts["rule"] | beam.Map(lambda r: r["cutoff"]), equal_to([4800]), label="cutoff")


# ---- analysis -----------------------------------------------------------------------------------------

def test_finalize_vocab_min_count_top_k_and_ties():
    items = [("b", 3), ("a", 3), ("c", 5), ("d", 1)]
    assert finalize_vocab(items, 2, None) == [("c", 5), ("a", 3), ("b", 3)]
    assert finalize_vocab(items, 1, 2) == [("c", 5), ("a", 3)]


def test_moments_merge_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 3.0, 1001)
    acc = merge_moments(merge_moments(moments_of(list(x[:10]), 1), moments_of([], 2)), moments_of(list(x[10:]), 0))
    n, missing, mean, m2, lo, hi = acc
    assert (n, missing, lo, hi) == (1001, 3, x.min(), x.max())
    assert math.isclose(mean, x.mean(), rel_tol=1e-12) and math.isclose((m2 / n) ** 0.5, x.std(), rel_tol=1e-9)


def test_analyze_train_shared_vocab_and_stats(spec, layout):
    conv = RowConverter(spec, layout, 1000)
    rows = ["1,u1,a1,7,1,10,a1|a2,1,1", "0,u2,a2,7,3,20,a2,2,1", "0,u3,a3,8,,30,a3|a3|a1,3,1"]
    records = [conv.convert(r.split(","), r)[1] for r in rows]
    with runner_pipeline() as p:
        out = p | beam.Create(records) | AnalyzeTrain(spec, layout)
        # ad counts tokens of ad and hist (shares_embedding_with: ad): a1 3, a2 3, a3 3 -> top_k 2 by token
        assert_that(out["vocab"], equal_to([("ad", [("a1", 3), ("a2", 3)]), ("user_id", [("u1", 1), ("u2", 1),
                    ("u3", 1)]), ("city", [("7", 2), ("8", 1)])]), label="vocab")
        assert_that(out["numeric"] | beam.Filter(lambda kv: kv[0] == "price"),
                    equal_to([("price", (2, 1, 2.0, 2.0, 1.0, 3.0))]), label="price")
        assert_that(out["boundaries"], equal_to([("age", (10.0, 20.0, 30.0))]), label="bounds")


def test_count_keys_pre_aggregates():
    with runner_pipeline() as p:
        assert_that(p | beam.Create(range(10)) | CountKeys(constant_key("n")), equal_to([("n", 10)]))


# ---- join ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [SIDE_INPUT, COGROUP])
def test_join_side_table_and_join_miss(tmp_path, method):
    (tmp_path / "users.txt").write_bytes("user_id;age;city\nu1;30;Zürich\nu2;;Köln\nbroken\n".encode("latin-1"))
    raw = {**RAW, "side_tables": [{"name": "users", "file": "users.txt", "key": "user_id", "delimiter": ";",
                                   "header": True, "encoding": "latin-1", "columns": ["user_id", "age2", "town"]}]}
    sp = spec_from_dict({**raw, "features": [*RAW["features"],
                                             {"name": "town", "kind": "categorical", "side": "user"}]})
    (table, keep), = appended_columns(sp)
    rows = [("f", "a", ["1", "u1"]), ("f", "b", ["0", "u2"]), ("f", "c", ["0", "u3"])]
    with runner_pipeline() as p:
        side = p | ReadSideTable(table, keep, str(tmp_path / "users.txt"))
        joined = (p | beam.Create(rows), side["rows"]) | JoinSideTable(table, 1, method)
        assert_that(joined.rows, equal_to([("f", "a", ["1", "u1", "30", "Zürich"]),
                                           ("f", "b", ["0", "u2", "", "Köln"])]), label="rows")
        assert_that(joined[REJECTED] | beam.Map(reason_of), equal_to(["join_miss"]), label="miss")
        assert_that(side["bad"] | beam.combiners.Count.Globally(), equal_to([1]), label="bad")
