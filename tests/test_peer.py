"""The DeepCTR peer reference (`rocketctr bench peer`): the id export, the peer script's own metrics and
isolation, and the bench's error when the bench-only env is absent. Training DeepCTR needs .venv-peer
(`make peer-env`): that test is `slow` and skips with a reason without it."""

from __future__ import annotations

import ast
import importlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import feature_specs
from models import data as model_data
from models.inputs import build_feature_inputs
from rocketctr.bench.quality import peer_bench, peer_data, peer_deepctr
from tests.train_helpers import CONFIG, REPO, fixture_data

PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
FRACTION = 0.2


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return fixture_data(tmp_path_factory.mktemp("peer") / "data", rows=1200)


@pytest.fixture(scope="module")
def export(fixture_dir, tmp_path_factory) -> tuple[Path, dict, dict]:
    npz = tmp_path_factory.mktemp("peer_export") / "peer.npz"
    peer_data.export_peer_data(fixture_dir, npz, FRACTION)
    meta, arrays = peer_data.load_peer_data(npz)
    return npz, meta, arrays


def _count(data_dir: Path, split: str) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(model_data.shard_files(data_dir, split), compression_type="GZIP"))


def test_export_has_every_row_of_each_part(fixture_dir, export):
    _, meta, arrays = export
    rows = meta["rows"]
    assert rows["train"] + rows["validation"] == _count(fixture_dir, "train")
    assert rows["eval"] == _count(fixture_dir, "eval")
    assert rows["validation"] > 0 and rows["train"] > rows["validation"]
    for part in peer_data.PARTS:
        assert arrays[f"{part}/label"].shape == (rows[part],)
        for f in meta["features"]:
            assert arrays[f"{part}/x/{f['name']}"].shape[0] == rows[part], (part, f["name"])


def test_validation_slice_is_the_training_jobs(fixture_dir, export):
    """The same rows the training job holds out (its own Holdout rule), in the same order."""
    _, meta, arrays = export
    spec = feature_specs.load_spec("synthetic")
    holdout = peer_data.make_holdout(spec, fixture_dir, FRACTION)
    labels = np.concatenate([y.numpy() for _, y, _ in model_data.make_dataset(
        fixture_dir, spec, "train", 256, holdout=peer_data.with_role(holdout, "validation"))])
    np.testing.assert_array_equal(arrays["validation/label"], labels)
    assert meta["holdout"]["fraction"] == FRACTION


def test_ids_stay_inside_their_tables(export):
    _, meta, arrays = export
    for f in meta["features"]:
        for part in peer_data.PARTS:
            x = arrays[f"{part}/x/{f['name']}"]
            if f["kind"] == "numeric":
                assert x.dtype == np.float32 and np.isfinite(x).all()
                continue
            assert x.dtype == np.int32 and x.min() >= 0 and x.max() < f["vocab_size"], (part, f["name"])
            if f["kind"] == "sequence":
                lengths = arrays[f"{part}/len/{f['name']}"]
                assert x.shape[1] == f["maxlen"] and lengths.max() <= f["maxlen"]
                past_end = np.arange(f["maxlen"])[None, :] >= lengths[:, None]
                assert not x[past_end].any()  # pads are 0 after the real tokens


def test_shared_tables_and_kinds_follow_the_spec(export):
    _, meta, _ = export
    spec = feature_specs.load_spec("synthetic")
    by_name = {f["name"]: f for f in meta["features"]}
    assert by_name["hist_cate"]["embedding_name"] == "ad_cate"
    assert by_name["hist_cate"]["vocab_size"] == by_name["ad_cate"]["vocab_size"]
    assert by_name["bid"]["kind"] == "categorical"  # bucketized numeric: its bucket id
    assert by_name["ad_price"]["kind"] == "numeric"
    assert [f["name"] for f in meta["features"]] == list(spec.feature_names)


@pytest.mark.parametrize("part", ["train", "eval"])
def test_ids_equal_what_the_input_layer_produces(fixture_dir, export, part):
    _, meta, arrays = export
    spec = feature_specs.load_spec("synthetic")
    holdout = peer_data.with_role(peer_data.make_holdout(spec, fixture_dir, FRACTION), "train") \
        if part == "train" else model_data.Holdout()
    batch, _, _ = next(iter(model_data.make_dataset(fixture_dir, spec, part, 64, holdout=holdout)))
    encoded = build_feature_inputs(spec, fixture_dir).encode(batch)
    n = int(tf.shape(batch["user_id"])[0])
    for f in meta["features"]:
        got, e = arrays[f"{part}/x/{f['name']}"][:n], encoded[f["name"]]
        if f["kind"] == "numeric":
            np.testing.assert_allclose(got, e.scale.numpy(), rtol=1e-6, err_msg=f["name"])
        elif f["kind"] == "categorical":
            np.testing.assert_array_equal(got, e.ids.numpy(), err_msg=f["name"])
        else:
            mask = e.mask.numpy() > 0
            lengths = arrays[f"{part}/len/{f['name']}"][:n]
            np.testing.assert_array_equal(lengths, mask.sum(axis=1))
            for row in range(n):
                np.testing.assert_array_equal(got[row, :lengths[row]], e.ids.numpy()[row][mask[row]])


def test_pack_sequence_moves_real_tokens_left():
    ids = np.array([[0, 5, 0, 7], [3, 0, 0, 0]])
    mask = np.array([[False, True, False, True], [True, False, False, False]])
    packed, lengths = peer_data.pack_sequence(ids, mask, 5)
    np.testing.assert_array_equal(packed, [[5, 7, 0, 0, 0], [3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [2, 1])
    with pytest.raises(peer_data.PeerDataError, match="more than the export width 1"):
        peer_data.pack_sequence(ids, mask, 1)


def test_an_identical_export_is_reused(fixture_dir, export):
    npz, meta, _ = export
    before = npz.stat().st_mtime_ns
    again = peer_data.export_peer_data(fixture_dir, npz, FRACTION)
    assert npz.stat().st_mtime_ns == before and again["rows"] == meta["rows"]


def test_export_rejects_a_non_npz_name(fixture_dir, tmp_path):
    with pytest.raises(peer_data.PeerDataError, match=r"must end in \.npz"):
        peer_data.export_peer_data(fixture_dir, tmp_path / "peer.bin", FRACTION)


# ------------------------------------------------------------------------------------------------ peer script
def test_peer_auc_matches_pairwise_counting_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(float)
    s = rng.integers(0, 8, 60) / 8.0  # many ties
    w = rng.uniform(0.5, 2.0, 60)
    num = den = 0.0
    for i, j in itertools.product(range(60), range(60)):
        if y[i] == 1 and y[j] == 0:
            den += w[i] * w[j]
            num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert peer_deepctr.metrics.auc(s, y, w) == pytest.approx(num / den, abs=1e-12)
    assert peer_deepctr.metrics.auc([0.2, 0.3], [1, 1]) is None
    assert peer_deepctr.metrics.logloss([0.5, 0.5], [1, 0]) == pytest.approx(np.log(2))


def test_peer_scores_with_our_metrics_module_in_its_own_env():
    """The peer loads common/metrics.py by path: the same file, and it loads in .venv-peer without our packages."""
    from common import metrics

    assert Path(peer_deepctr.metrics.__file__).resolve() == Path(metrics.__file__).resolve()
    if not PEER_PYTHON.is_file():
        pytest.skip(f"{PEER_PYTHON} is absent (`make peer-env`)")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import peer_deepctr as p; "
            "assert 'common' not in sys.modules; print(p.metrics.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(PEER_PYTHON), "-c", code, str(Path(peer_deepctr.__file__).parent)], env=env,
                         cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip()) == pytest.approx(0.75)


def test_peer_script_imports_no_project_module():
    """It runs in .venv-peer, where our packages are not installed: numpy, tensorflow, deepctr, the stdlib and
    requests (deepctr's dependency, only to silence its version check) only."""
    tree = ast.parse(Path(peer_deepctr.__file__).read_text())
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    assert tops - set(sys.stdlib_module_names) <= {"numpy", "tensorflow", "deepctr", "requests"}, tops


def test_peer_script_without_deepctr_names_the_peer_env(tmp_path, capsys):
    if importlib.util.find_spec("deepctr") is not None:
        pytest.skip("deepctr is installed in this env (it must not be in the main env)")
    code = peer_deepctr.main(["--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "r.json")])
    assert code == peer_deepctr.MISSING_ENV
    assert "make peer-env" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bench command
def test_bench_is_registered():
    from rocketctr.commands.bench import BENCHMARKS

    assert BENCHMARKS["peer"] == "rocketctr.bench.quality.peer_bench"
    assert importlib.import_module(BENCHMARKS["peer"]).main is peer_bench.main


def test_bench_without_the_peer_env_says_make_peer_env(fixture_dir, tmp_path, capsys):
    missing = tmp_path / "no-venv" / "bin" / "python"
    code = peer_bench.main(["--data", str(fixture_dir), "--config", str(CONFIG), "--out", str(tmp_path / "p.json"),
                            "--python", str(missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert "make peer-env" in err and str(missing) in err
    assert not (tmp_path / "p.json").exists()


def test_config_defaults_are_our_booster():
    from models.config import load_config

    cfg = load_config(REPO / "configs" / "movielens.yaml")
    d = peer_bench.config_defaults(cfg, "movielens")
    assert d["hidden"] == list(cfg.model.booster.hidden) and d["dropout"] == cfg.model.booster.dropout
    assert d["batch_size"] == cfg.train.batch_size and d["l2"] == cfg.model.booster.l2
    assert d["lr"] == cfg.train.booster_optimizer.learning_rate
    assert d["patience"] == cfg.train.early_stopping_patience and d["epochs"] == cfg.train.epochs
    assert d["emb_dim"] == cfg.model.embedding_dim  # the tuned width, not the spec's


@pytest.mark.slow
def test_bench_runs_deepctr_in_the_peer_env(fixture_dir, tmp_path):
    if not PEER_PYTHON.is_file():
        pytest.skip(f"{PEER_PYTHON} is absent: build the bench-only env with `make peer-env`")
    out = tmp_path / "peer.json"
    code = peer_bench.main(["--data", str(fixture_dir), "--config", str(CONFIG), "--out", str(out), "--seeds", "1",
                            "--epochs", "1", "--hidden", "16", "--models", "dnn,dcn"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert [s["model"] for s in doc["summary"]] == ["dnn", "dcn"]
    for s in doc["summary"]:
        assert 0.0 <= s["eval_auc"] <= 1.0 and s["validation_auc"] is not None and s["best_epoch"] == [1]
    assert doc["peer"]["rows"] == doc["export"]["rows"]
    assert "| dnn | deepctr.models.WDL" in out.with_suffix(".md").read_text()
