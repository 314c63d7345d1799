"""models.inputs / models.embeddings: the one preprocessing path, table placement and pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from fixtures_data import numeric_base, synthetic_frame, tiny_spec, write_fixture_dataset

from feature_specs import artifacts
from models.embeddings import pool, table_parts
from models.inputs import build_feature_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_inputs")
    spec = tiny_spec(d)
    return spec, write_fixture_dataset(spec, synthetic_frame(spec, 200, 0), d / "data")


def test_vocab_tokens_map_after_oov_buckets_and_unknowns_to_oov(tiny):
    spec, data = tiny
    inputs = build_feature_inputs(spec, data)
    tokens = artifacts.read_vocab_tokens(data, "user_id")
    ids = inputs.encode({"user_id": tf.constant([tokens[0], tokens[3], "never-seen", ""])}, ("user_id",))
    got = ids["user_id"].ids.numpy()
    assert got[0] == 2 and got[1] == 5  # oov_buckets: 2 in the tiny spec
    assert 0 <= got[2] < 2 and 0 <= got[3] < 2
    assert inputs.rows("user_id") == 2 + len(tokens)


def test_sequence_uses_its_owners_table_and_masks_padding(tiny):
    spec, data = tiny
    inputs = build_feature_inputs(spec, data)
    tok = artifacts.read_vocab_tokens(data, "ad_cate")[1]
    enc = inputs.encode({"ad_cate": tf.constant([tok]), "hist_cate": tf.constant([[tok, "", ""]])},
                        ("ad_cate", "hist_cate"))
    assert enc["hist_cate"].ids.numpy()[0, 0] == enc["ad_cate"].ids.numpy()[0]
    np.testing.assert_array_equal(enc["hist_cate"].mask.numpy(), [[1.0, 0.0, 0.0]])
    assert "hist_cate" not in inputs.encoders  # no second vocabulary for a sharing sequence


def test_sequences_longer_than_max_length_keep_the_most_recent(tiny):
    spec, data = tiny
    inputs = build_feature_inputs(spec, data)
    toks = artifacts.read_vocab_tokens(data, "ad_cate")
    enc = inputs.encode({"hist_cate": tf.constant([toks[:7]])}, ("hist_cate",))
    assert enc["hist_cate"].ids.shape[1] == 5  # max_length
    np.testing.assert_array_equal(enc["hist_cate"].ids.numpy()[0], [1 + i for i in range(2, 7)])  # 1 OOV row


def test_numeric_transforms_follow_stats(tiny):
    spec, data = tiny
    inputs = build_feature_inputs(spec, data)
    st = artifacts.read_stats(data).numeric
    raw = np.array([0.0, 3.0, 5000.0, -2.0, np.nan], dtype=np.float32)
    enc = inputs.encode({"ad_price": tf.constant(raw), "u_age": tf.constant(raw)}, ("ad_price", "u_age"))
    f = spec.feature("ad_price")
    filled = np.where(np.isnan(raw), f.default, raw)
    want = (numeric_base(f, filled) - st["ad_price"].mean) / st["ad_price"].std
    np.testing.assert_allclose(enc["ad_price"].scale.numpy(), want, rtol=1e-4, atol=1e-5)
    assert np.isfinite(enc["ad_price"].scale.numpy()).all()  # NaN -> default, huge -> clip_max
    bounds = st["u_age"].boundaries
    np.testing.assert_array_equal(enc["u_age"].ids.numpy(), np.searchsorted(bounds, np.nan_to_num(raw), side="right"))
    assert enc["u_age"].scale is None and inputs.rows("u_age") == len(bounds) + 1


def test_missing_vocabulary_is_a_clear_error(tiny, tmp_path):
    spec, data = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "stats.json").write_text((data / "stats.json").read_text())
    with pytest.raises(artifacts.ArtifactError, match="user_id"):
        build_feature_inputs(spec, broken)


def test_table_parts_follow_tower_lists(tiny):
    spec, _ = tiny
    shared = table_parts(spec, share=True)
    assert shared["light"]["user_id"] == "shared" and shared["booster"]["user_id"] == "shared"
    assert shared["booster"]["u_city"] == "booster" and "u_city" not in shared["light"]
    assert shared["light"]["page"] == "light"
    assert shared["booster"]["ad_cate"] == "shared"  # ad_cate and hist_cate share one table
    apart = table_parts(spec, share=False)
    assert apart["light"]["user_id"] == "light" and apart["booster"]["user_id"] == "booster"


@pytest.mark.parametrize("how,want", [("mean", [2.0, 0.0]), ("sum", [4.0, 0.0]), ("max", [3.0, 0.0])])
def test_masked_pooling_and_empty_sequences(how, want):
    values = tf.constant([[[1.0], [3.0], [100.0]], [[5.0], [6.0], [7.0]]])
    mask = tf.constant([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    got = pool(values, mask, how).numpy()[:, 0]
    np.testing.assert_allclose(got, want)
    assert all(math.isfinite(v) for v in got)
