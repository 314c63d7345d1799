"""TowerPath.candidate_logits (what score_candidates runs): the user side embedded once and broadcast as vectors
must score exactly like the tower on the user's raw inputs repeated to every candidate row."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from fixtures_data import fixture_batch, synthetic_frame, tiny_spec, write_fixture_dataset

from models.config import ModelConfig, RunConfig, TowerConfig
from models.rocket import build_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("candidates")
    spec = tiny_spec(d)
    return spec, write_fixture_dataset(spec, synthetic_frame(spec, 120, 3), d / "data")


def _split(spec, x, row):
    user = {k: v[row:row + 1] for k, v in x.items() if spec.feature(k).side != "item"}
    items = {k: v for k, v in x.items() if spec.feature(k).side == "item"}
    return user, items


def _broadcast_raw(user, items):
    n = int(tf.shape(next(iter(items.values())))[0])
    return {**{k: tf.repeat(v, n, axis=0) for k, v in user.items()}, **items}


@pytest.mark.parametrize("light,booster,share", [("lr", "mlp", True), ("fm", "dcn", True), ("mlp", "din", True),
                                                 ("mlp", "dcn", False)])
def test_candidate_logits_equal_logits_on_broadcast_raw_inputs(data, light, booster, share):
    spec, d = data
    cfg = RunConfig(model=ModelConfig(share_embeddings=share, light=TowerConfig(light),
                                      booster=TowerConfig(booster, (16,), attention_hidden=(8,))))
    model = build_model(spec, d, cfg)
    x, _ = fixture_batch(spec, d, "eval", batch_size=24)
    for tower in ("light", "booster"):
        path = model.tower_path(tower)
        calls = []
        split = path.tower.split_logits
        path.tower.split_logits = lambda parts, kernels=None, _f=split: calls.append(len(parts)) or _f(parts, kernels)
        for row in (0, 5):  # a user who is not row 0 of the batch: nothing may read the wrong row
            user, items = _split(spec, x, row)
            want = path.logits(_broadcast_raw(user, items)).numpy()
            got = path.candidate_logits(user, items).numpy()
            assert got.shape == want.shape == (24,)
            assert np.abs(got - want).max() < 1e-5, (tower, row)
            assert np.std(want) > 0  # the items differ: a test that broadcast one score everywhere would fail
            # the export's pre-split kernels (the user's and the items' kernel rows gathered once) score the same
            kernels = path.split_kernels(frozenset(user))
            assert (kernels is None) == (not path.tower.splits_first_layer)
            assert np.abs(path.candidate_logits(user, items, kernels).numpy() - got).max() < 1e-6, (tower, row)
            if kernels is not None:  # kernels split for another user/item split are refused, not misapplied
                with pytest.raises(ValueError, match="pre-split"):
                    path.candidate_logits(user, items, path.split_kernels(frozenset()))
        # mlp / lr towers take the split first layer (user part once, item part per row); dcn / fm / din read
        # their fields jointly and go through the broadcast path
        kind = cfg.model.light.kind if tower == "light" else cfg.model.booster.kind
        assert calls == ([2, 2, 2, 2] if kind in ("mlp", "lr") else []), (tower, kind)


def test_candidate_logits_one_candidate_and_a_traced_graph(data):
    """batch 1 on both sides (the N=1 request) and inside a tf.function with unknown N, as the export traces it."""
    spec, d = data
    model = build_model(spec, d, RunConfig())
    path = model.tower_path("light")
    x, _ = fixture_batch(spec, d, "eval", batch_size=7)
    user, items = _split(spec, x, 2)
    one = {k: v[:1] for k, v in items.items()}
    np.testing.assert_allclose(path.candidate_logits(user, one).numpy(),
                               path.logits(_broadcast_raw(user, one)).numpy(), atol=1e-5)
    sig = [{k: tf.TensorSpec([1, *v.shape[1:]], v.dtype) for k, v in user.items()},
           {k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in items.items()}]
    traced = tf.function(path.candidate_logits, input_signature=sig, autograph=False)
    np.testing.assert_allclose(traced(user, items).numpy(), path.logits(_broadcast_raw(user, items)).numpy(),
                               atol=1e-5)
