"""The seeded click simulator: exact spec format, determinism, realistic CTR, and a REAL nonlinear truth.

The key check fits per-feature-only logistic regressions on the written files (one-hot ids, quantile-bucketed
numerics, multi-hot history) and shows (a) they score clearly below the ground truth on held-out rows, and
(b) adding the crosses the truth model uses lifts the fitted AUC, i.e. the gap is learnable structure, not noise.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import feature_specs
from pipeline.simulator.click_logs import SimulationError, StreamingAUC, simulate
from rocketctr.cli import main as cli_main

SPEC = feature_specs.load_spec("synthetic")
CATEGORICALS = [f.source for f in SPEC.features if f.kind == "categorical"]
NUMERICS = [f.source for f in SPEC.features if f.kind == "numeric"]
SEQUENCES = [f.source for f in SPEC.features if f.kind == "sequence"]
MISSING = set(SPEC.format.missing_values)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based ROC AUC (average ranks for ties)."""
    ranks = pd.Series(score).rank(method="average").to_numpy()
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_raw(path) -> pd.DataFrame:
    return pd.read_csv(path, sep=SPEC.format.delimiter, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One 150k-row run shared by the content tests (two shards to exercise sharding)."""
    out = tmp_path_factory.mktemp("sim")
    result = simulate(150_000, out, seed=0, shard_rows=100_000)
    raw = pd.concat([read_raw(p) for p in result.click_files], ignore_index=True)
    truth = pd.concat([pd.read_csv(p) for p in result.truth_files], ignore_index=True)
    return result, raw, truth


def _digests(files) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = simulate(3_000, tmp_path / "a", seed=7, shard_rows=2_000, gzip=True)
    b = simulate(3_000, tmp_path / "b", seed=7, shard_rows=2_000, gzip=True)
    c = simulate(3_000, tmp_path / "c", seed=8, shard_rows=2_000, gzip=True)
    assert [p.name for p in a.click_files] == ["clicks-00000.csv.gz", "clicks-00001.csv.gz"]
    assert _digests(a.click_files + a.truth_files) == _digests(b.click_files + b.truth_files)
    assert _digests(a.click_files)[0] != _digests(c.click_files)[0]
    assert _digests(a.truth_files)[0] != _digests(c.truth_files)[0]


def test_columns_and_every_row_parse_with_the_spec(sim):
    result, raw, _ = sim
    assert tuple(raw.columns) == SPEC.format.columns
    assert len(raw) == result.rows == 150_000
    assert set(raw[SPEC.label.name]) <= {"0", "1"}
    for col in CATEGORICALS:
        values = raw[col]
        assert (values != "").all() or values.isin(MISSING).any(), col
        assert not values.str.contains(r"[,|\s]").any(), f"{col} has separator characters"
    for col in NUMERICS:
        present = raw[col][~raw[col].isin(MISSING)]
        assert np.isfinite(present.astype(float)).all(), col
        assert len(present) > 0.9 * len(raw), f"{col} is mostly missing"
    # missing values are realistic: a few % in some fields, both markers used, ids never missing
    rates = {c: raw[c].isin(MISSING).mean() for c in raw.columns if c not in SEQUENCES}
    assert 0.005 < rates["u_gender"] < 0.1 and 0.005 < rates["u_occupation"] < 0.1
    assert rates["user_id"] == rates["ad_id"] == rates["ad_cate"] == 0.0
    assert (raw["u_occupation"] == "NULL").any() and (raw["u_city"] == "").any()
    # sequences use the id spaces of the tables they share embeddings with
    for seq, owner in (("hist_cate", "ad_cate"), ("hist_brand", "ad_brand")):
        tokens = raw[seq][raw[seq] != ""].str.split("|").explode()
        assert len(tokens) > len(raw), f"{seq} is nearly empty"
        assert tokens.str.fullmatch(r"\d+").all()
        owner_ids = set(raw[owner][~raw[owner].isin(MISSING)])
        assert tokens.isin(owner_ids).mean() > 0.9, f"{seq} tokens are not {owner} ids"
    assert 0.02 < (raw["hist_cate"] == "").mean() < 0.2  # some cold-start users
    lengths = raw["hist_cate"].str.count(r"\|") + 1
    assert lengths.max() <= next(f.max_length for f in SPEC.features if f.name == "hist_cate")


def test_ctr_groups_and_truth_alignment(sim):
    result, raw, truth = sim
    assert list(truth.columns) == ["req_id", "user_id", "p_true", "clk"]
    assert (truth["req_id"].astype(str) == raw["req_id"]).all()
    assert (truth["user_id"].astype(str) == raw["user_id"]).all()
    assert (truth["clk"].astype(str) == raw["clk"]).all()
    assert 0.02 <= result.base_ctr <= 0.05 and result.clicks == truth["clk"].sum()
    assert raw["req_id"].is_unique
    per_user = raw["user_id"].value_counts()
    assert (per_user >= 3).sum() > 5_000  # repeated users: GAUC has groups to work with
    assert raw["ad_id"].value_counts().iloc[0] > 50 * raw["ad_id"].value_counts().median()  # long tail
    summary = json.loads((result.out_dir / "simulation.json").read_text())
    assert summary["rows"] == 150_000 and summary["clicks"] == result.clicks
    assert summary["click_files"] == ["clicks-00000.csv", "clicks-00001.csv"]
    y, p = truth["clk"].to_numpy(), truth["p_true"].to_numpy()
    assert auc(p, y) > 0.75 and abs(auc(p, y) - result.truth_auc) < 0.002  # streaming AUC == exact AUC
    assert result.truth_auc - result.additive_auc > 0.05


def test_streaming_auc_matches_rank_auc():
    rng = np.random.default_rng(0)
    z = rng.normal(-3, 1.5, 50_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(np.int64)
    s = StreamingAUC()
    s.update(z[:20_000], y[:20_000])
    s.update(z[20_000:], y[20_000:])
    assert abs(s.result() - auc(z, y)) < 1e-4


def _token_columns(raw: pd.DataFrame, n_train: int) -> dict[str, pd.Series]:
    """Per-feature tokens: raw categorical values and quantile buckets (fitted on training rows) of numerics."""
    cols: dict[str, pd.Series] = {c: raw[c] for c in CATEGORICALS}
    for c in NUMERICS:  # per-feature nonlinear shape
        x = pd.to_numeric(raw[c].replace(list(MISSING), np.nan))
        edges = np.unique(np.nanquantile(x[:n_train], np.linspace(0, 1, 17)[1:-1]))
        cols[c] = pd.Series(np.where(x.isna(), -1, np.searchsorted(edges, x)), index=raw.index).astype(str)
    return cols


def _cross_columns(raw: pd.DataFrame, cols: dict[str, pd.Series]) -> dict[str, pd.Series]:
    """The crosses the ground truth uses (as observable tokens), for the with-crosses comparison model."""
    out = {f"{a}x{b}": cols[a] + "_" + cols[b] for a, b in (
        ("hour", "os"), ("u_segment", "ad_cate"), ("u_gender", "ad_cate"), ("u_age_level", "creative_type"),
        ("pid", "ad_format"), ("ad_price", "user_purchase_power"))}
    for seq, item in (("hist_cate", "ad_cate"), ("hist_brand", "ad_brand")):
        out[f"{seq}_has"] = pd.Series([f"|{i}|" in f"|{h}|" for h, i in zip(raw[seq], raw[item])]).astype(str)
    return out


def _history(raw: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Mean-pooled multi-hot history per sequence: (row, local code, weight, vocabulary size)."""
    parts = []
    for seq in SEQUENCES:
        tok = raw[seq].str.split("|").explode()
        tok = tok[tok != ""]
        codes, uniques = pd.factorize(tok)
        lens = tok.groupby(level=0).size()
        parts.append((tok.index.to_numpy(), codes, 1.0 / lens.loc[tok.index].to_numpy(), len(uniques)))
    return parts


def _design(cols: list[pd.Series], history) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sparse rows (indptr, indices, values, dim) of one-hot token columns plus the history part."""
    codes, offset = [], 0
    for s in cols:
        c, uniques = pd.factorize(s)
        codes.append(c + offset)
        offset += len(uniques)
    n, k = len(cols[0]), len(codes)
    rows, idx, val = [np.repeat(np.arange(n), k)], [np.stack(codes, 1).ravel()], [np.ones(n * k)]
    for r, c, v, size in history:
        rows.append(r)
        idx.append(c + offset)
        val.append(v)
        offset += size
    rows_all = np.concatenate(rows)
    order = np.argsort(rows_all, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows_all, minlength=n))])
    return indptr, np.concatenate(idx)[order], np.concatenate(val)[order], offset


def _fit_predict(indptr, idx, val, dim, y, n_train, epochs=4, lr=0.05, l2=1e-5, batch=1024) -> np.ndarray:
    """Logistic regression with Adagrad over sparse rows: a per-feature-effects-only (additive) model."""
    w, g2, bias = np.zeros(dim), np.full(dim, 1e-8), np.log(y[:n_train].mean() / (1 - y[:n_train].mean()))
    rng = np.random.default_rng(0)

    def logits(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lens = indptr[rows + 1] - indptr[rows]
        pos = np.repeat(indptr[rows] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        owner = np.repeat(np.arange(len(rows)), lens)
        return np.bincount(owner, w[idx[pos]] * val[pos], minlength=len(rows)) + bias, pos, owner

    for _ in range(epochs):
        for b in np.array_split(rng.permutation(n_train), max(1, n_train // batch)):
            z, pos, owner = logits(b)
            err = 1 / (1 + np.exp(-z)) - y[b]
            grad = np.bincount(idx[pos], err[owner] * val[pos], minlength=dim) + l2 * w
            g2 += grad ** 2
            w -= lr * grad / np.sqrt(g2)
    return logits(np.arange(n_train, len(indptr) - 1))[0]


def test_nonlinear_part_is_real(sim):
    _, raw, truth = sim
    y = raw["clk"].astype(int).to_numpy()
    n_train = 120_000
    held_y, held_p = y[n_train:], truth["p_true"].to_numpy()[n_train:]
    cols, history = _token_columns(raw, n_train), _history(raw)
    base = list(cols.values())
    additive = auc(_fit_predict(*_design(base, history), y, n_train), held_y)
    crossed = auc(_fit_predict(*_design(base + list(_cross_columns(raw, cols).values()), history), y, n_train), held_y)
    truth_auc = auc(held_p, held_y)
    print(f"held-out AUC: truth {truth_auc:.4f}, fitted additive {additive:.4f}, fitted + truth crosses {crossed:.4f}")
    assert additive > 0.6  # the per-feature effects are learnable...
    assert truth_auc - additive >= 0.02  # ...but the truth is clearly more than their sum
    assert crossed - additive >= 0.01  # and the gap is structure a feature-crossing model can recover


def test_cli_writes_files_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["simulate", "--rows", "2000", "--out", str(out), "--seed", "3", "--shard-rows", "1500"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clicks-00000.csv", "clicks-00001.csv", "simulation.json",
                                                    "truth-00000.csv", "truth-00001.csv"]
    assert "ground-truth AUC" in capsys.readouterr().out
    assert cli_main(["simulate", "--rows", "2000", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["simulate", "--rows", "1000", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clicks-00000.csv", "simulation.json", "truth-00000.csv"]
    assert cli_main(["simulate", "--rows", "0", "--out", str(tmp_path / "z")]) == 2
    assert "rows must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    with pytest.raises(SimulationError, match="shard_rows"):
        simulate(10, tmp_path / "y", shard_rows=0)
