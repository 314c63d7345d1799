"""The spec loader (good and bad specs) and the agreement of everything derived from a spec."""

from __future__ import annotations

import copy

import pytest
import tensorflow as tf
import yaml

from feature_specs import derive
from feature_specs.loader import SpecError, load_spec, shipped_specs, spec_from_dict, spec_hash, spec_to_dict

GOOD = {
    "name": "tiny",
    "format": {"delimiter": ",", "header": True, "columns": ["clk", "uid", "ad", "price", "hist", "ts"]},
    "label": {"name": "clk"},
    "group_key": "uid",
    "timestamp": "ts",
    "split": {"method": "time_fraction", "eval_fraction": 0.2},
    "features": [
        {"name": "uid", "kind": "categorical", "side": "user", "vocab": {"min_count": 2, "top_k": 10}},
        {"name": "ad", "kind": "categorical", "side": "item", "hash_buckets": 100, "towers": ["booster"]},
        {"name": "price", "kind": "numeric", "side": "item", "transform": "bucketize", "num_buckets": 4},
        {"name": "hist", "kind": "sequence", "side": "user", "max_length": 5, "shares_embedding_with": "uid"},
    ],
}


def bad(path: list, value, drop: bool = False) -> dict:
    d = copy.deepcopy(GOOD)
    cur = d
    for key in path[:-1]:
        cur = cur[key]
    if drop:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return d


def test_good_spec_parses_into_typed_frozen_objects():
    spec = spec_from_dict(GOOD, "tiny.yaml")
    assert spec.feature_names == ("uid", "ad", "price", "hist")
    assert spec.feature("ad").towers == ("booster",) and spec.feature("ad").is_hashed
    assert spec.feature("uid").vocab.top_k == 10
    assert spec.feature("hist").vocab_owner == "uid" and spec.feature("hist").delimiter == "|"
    assert [f.name for f in spec.vocab_features] == ["uid"]
    assert [f.name for f in spec.for_tower("light")] == ["uid", "price", "hist"]
    with pytest.raises(Exception):
        spec.feature("uid").embedding_dim = 3  # frozen


@pytest.mark.parametrize("path,value,fragment", [
    (["features", 0, "embeding_dim"], 8, "feature 'uid': key 'embeding_dim': unknown key"),
    (["features", 1, "kind"], "bogus", "feature 'ad': key 'kind': 'bogus' is not one of"),
    (["features", 2, "num_buckets"], 1, "feature 'price': key 'num_buckets': bucketize needs"),
    (["features", 0, "embedding_dim"], 0, "feature 'uid': key 'embedding_dim': must be in 1..1024"),
    (["features", 0, "towers"], ["heavy"], "feature 'uid': key 'towers'"),
    (["features", 0, "vocab"], {"min_count": 0}, "feature 'uid' vocab: key 'min_count'"),
    (["features", 2, "max_length"], 3, "feature 'price': key 'max_length': does not apply to a numeric"),
    (["features", 3, "shares_embedding_with"], "nope", "feature 'hist': key 'shares_embedding_with'"),
    (["features", 1, "source"], "missing_col", "feature 'ad': key 'source': column 'missing_col'"),
    (["features", 0, "embedding_dim"], True, "feature 'uid': key 'embedding_dim': expected int, got a boolean"),
    (["label", "threshold"], "four", "label: key 'threshold': expected float"),
    (["split", "eval_fraction"], 1.5, "split: key 'eval_fraction'"),
    (["format", "delimiter"], ";;", "format: key 'delimiter'"),
    (["colour"], "red", "top level: key 'colour': unknown key"),
])
def test_bad_spec_names_file_feature_and_key(path, value, fragment):
    with pytest.raises(SpecError) as e:
        spec_from_dict(bad(path, value), "tiny.yaml")
    assert str(e.value).startswith("tiny.yaml: ")
    assert fragment in str(e.value)


def test_cross_field_errors():
    with pytest.raises(SpecError, match="'time_fraction' needs a top-level timestamp"):
        spec_from_dict(bad(["timestamp"], None, drop=True), "t.yaml")
    dup = bad(["features"], GOOD["features"] + [GOOD["features"][0]])
    with pytest.raises(SpecError, match="feature 'uid': key 'name': duplicate"):
        spec_from_dict(dup, "t.yaml")
    with pytest.raises(SpecError, match="key 'features': is required"):
        spec_from_dict(bad(["features"], None, drop=True), "t.yaml")


def test_load_spec_from_file_and_bad_yaml(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    assert load_spec(p).name == "tiny"
    p.write_text("features: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")


def test_spec_hash_is_content_based():
    a, b = spec_from_dict(GOOD, "a.yaml"), spec_from_dict(copy.deepcopy(GOOD), "elsewhere/b.yaml")
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash(spec_from_dict(bad(["features", 2, "num_buckets"], 5), "a.yaml"))
    assert "path" not in spec_to_dict(a)


SHIPPED = [p.stem for p in shipped_specs()]


def test_the_required_specs_are_shipped():
    assert "synthetic" in SHIPPED


def _example_for(spec) -> bytes:
    feats = {}
    for key, rf in derive.record_fields(spec).items():
        if rf.wire == "bytes":
            vals = [b"a", b"b", b"c"] if rf.varlen else [b"x"]
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=vals))
        elif rf.wire == "int64":
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[7]))
        else:
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@pytest.mark.parametrize("name", SHIPPED)
def test_parse_spec_keras_inputs_and_serving_inputs_agree(name):
    spec = load_spec(name)
    model_specs = derive.model_input_specs(spec)
    serving = derive.serving_input_specs(spec)
    keras_inputs = derive.example_keras_inputs(spec)
    assert list(model_specs) == list(serving) == list(keras_inputs) == list(spec.feature_names)
    for n, ts in model_specs.items():
        assert serving[n].dtype == ts.dtype and serving[n].shape.as_list() == ts.shape.as_list()
        assert keras_inputs[n] == (tuple(ts.shape[1:]), ts.dtype)
    # The sides used by score_candidates partition the features.
    user_ctx = derive.serving_input_specs(spec, sides=("user", "context"), batch=1)
    items = derive.serving_input_specs(spec, sides=("item",))
    assert set(user_ctx) | set(items) == set(model_specs) and not set(user_ctx) & set(items)
    assert all(t.shape[0] == 1 for t in user_ctx.values())
    # A record written in the derived layout parses back into exactly the model's input tensors.
    parsed = tf.io.parse_example(tf.constant([_example_for(spec), _example_for(spec)]), derive.parse_spec(spec))
    inputs = derive.to_model_inputs(spec, parsed)
    assert list(inputs) == list(model_specs)
    for n, t in inputs.items():
        assert model_specs[n].is_compatible_with(tf.TensorSpec.from_tensor(t)), (n, t.shape, t.dtype)
    # Missing values parse to the documented defaults.
    empty = tf.io.parse_example(tf.constant([b""]), derive.parse_spec(spec, features_only=True))
    for f in spec.features:
        got = derive.to_model_inputs(spec, empty)[f.name].numpy()
        if f.kind == "numeric":
            assert got[0] == pytest.approx(f.default)
        elif f.kind == "categorical":
            assert got[0] == derive.PAD.encode()
        else:
            assert got.shape == (1, 0)


def test_sequences_keep_the_most_recent_items(synthetic_spec):
    f = synthetic_spec.feature("hist_cate")
    t = tf.constant([[str(i) for i in range(f.max_length + 5)]])
    out = derive.truncate_sequence(t, f).numpy()[0]
    assert len(out) == f.max_length and out[-1] == str(f.max_length + 4).encode()


def test_numeric_pre_transform_matches_the_model_input_layer():
    """stats.json (Beam, numpy) and the model (TensorFlow) must transform numerics identically."""
    import numpy as np

    from feature_specs.artifacts import NumericStats
    from feature_specs.numeric import pre_transform
    from models.inputs import NumericEncoder

    spec = spec_from_dict(bad(["features", 2], {"name": "price", "kind": "numeric", "side": "item",
                                                "transform": "log1p_standardize", "clip_max": 50.0}), "t.yaml")
    f = spec.feature("price")
    x = np.array([-3.0, 0.0, 0.5, 10.0, 1e6], dtype=np.float32)
    identity = NumericStats(count=5, missing=0, mean=0.0, std=1.0, min=0.0, max=1.0)
    model_side = NumericEncoder(f, identity).encode(tf.constant(x)).scale.numpy()
    np.testing.assert_allclose(pre_transform(f, x), model_side, rtol=1e-5, atol=1e-6)


def test_a_spec_that_extends_another_states_only_what_differs(tmp_path):
    from feature_specs.loader import SPEC_DIR, resolved_text

    cold = load_spec("jester_coldstart")
    base = load_spec("jester")
    assert cold.split.method == "hash_group" and base.split.method == "hash_row"  # production: users recur
    assert cold.features == base.features and cold.label == base.label and cold.name == "jester_coldstart"
    copy = tmp_path / "spec.yaml"  # what a data folder keeps: self-contained, same content hash
    copy.write_text(resolved_text(SPEC_DIR / "jester_coldstart.yaml"))
    assert spec_hash(load_spec(copy)) == spec_hash(cold)


def test_extends_errors_name_the_key(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(SpecError, match="'extends': a cycle"):
        load_spec(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\nname: c\n")
    with pytest.raises(SpecError, match="'extends': no spec 'nowhere'"):
        load_spec(tmp_path / "c.yaml")
