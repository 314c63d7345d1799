"""compare's pure parts on hand-made metrics.json files: grouping, dedup, pairing, t, and refusals."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.evaluate.compare_runs import CompareError, compare, mean_std, paired_diff


def write_eval(path, models: dict, data="/d", split="eval"):
    path.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "rocketctr-eval", "version": 1, "data_dir": data, "split": split, "models": {
        label: {"group": g, "seed": seed, "mode": mode, "tower": "light", "path": f"/models/{label}", "role": "x",
                "metrics": {"auc": auc, "gauc": gauc, "logloss": ll}}
        for label, (g, seed, mode, auc, gauc, ll) in models.items()}}
    (path / "metrics.json").write_text(json.dumps(doc))
    return path


def test_mean_std_and_paired_t_hand_worked():
    assert mean_std([]) == (None, None)
    assert mean_std([0.7]) == (0.7, None)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)
    d = paired_diff({0: 0.70, 1: 0.72, 2: 0.71, 9: 0.5}, {0: 0.68, 1: 0.69, 2: 0.70})  # seed 9 unpaired
    assert d.n == 3 and d.mean == pytest.approx(0.02) and d.std == pytest.approx(0.01)
    assert d.t == pytest.approx(0.02 / (0.01 / math.sqrt(3)))
    assert paired_diff({0: 0.7}, {0: 0.6}).t is None  # one pair: no spread, no t


def test_compare_groups_by_setup_and_pairs_by_seed(tmp_path):
    e0 = write_eval(tmp_path / "e0", {"L0": ("light", 0, "light", 0.70, 0.60, 0.40),
                                      "R0": ("rocket", 0, "rocket", 0.72, 0.63, 0.39)})
    e1 = write_eval(tmp_path / "e1", {"L1": ("light", 1, "light", 0.71, 0.61, 0.41),
                                      "R1": ("rocket", 1, "rocket", 0.72, 0.62, 0.40),
                                      "L0": ("light", 0, "light", 0.70, 0.60, 0.40)})  # L0 again: counted once
    c = compare([e0, e1 / "metrics.json"])
    assert c.baseline == "light" and [r.group for r in c.rows] == ["light", "rocket"]
    light, rocket = c.rows
    assert light.seeds == [0, 1] and light.diff == {}
    assert rocket.mean["auc"] == pytest.approx(0.72) and rocket.std["auc"] == pytest.approx(0.0)
    assert rocket.diff["gauc"].mean == pytest.approx(0.02) and rocket.diff["gauc"].n == 2
    assert rocket.diff["gauc"].t == pytest.approx(0.02 / (math.sqrt(2 * 0.01 ** 2) / math.sqrt(2)))
    md = c.markdown()
    assert "| light (baseline) | light | 0,1 |" in md and "+0.0200 (t=2.00, n=2)" in md


def test_compare_explicit_baseline_and_refusals(tmp_path):
    e0 = write_eval(tmp_path / "e0", {"A": ("a", 0, "rocket", 0.7, 0.6, 0.4), "B": ("b", 0, "kd", 0.8, 0.7, 0.3)})
    c = compare([e0], baseline="b")
    assert c.rows[0].group == "b" and c.rows[1].diff["auc"].mean == pytest.approx(-0.1)
    assert compare([e0]).baseline is None and "No baseline" in compare([e0]).markdown()
    with pytest.raises(CompareError, match="no such group"):
        compare([e0], baseline="zzz")
    other = write_eval(tmp_path / "other", {"C": ("c", 0, "light", 0.7, 0.6, 0.4)}, data="/elsewhere")
    with pytest.raises(CompareError, match="different data"):
        compare([e0, other])
    dup = write_eval(tmp_path / "dup", {"A2": ("a", 0, "rocket", 0.7, 0.6, 0.4)})
    with pytest.raises(CompareError, match="seed 0: two different models"):
        compare([e0, dup])
    with pytest.raises(CompareError, match="run `rocketctr eval`"):
        compare([tmp_path / "nothing"])
    (tmp_path / "bogus").mkdir()
    (tmp_path / "bogus" / "metrics.json").write_text(json.dumps({"kind": "training"}))
    with pytest.raises(CompareError, match="not a rocketctr eval"):
        compare([tmp_path / "bogus"])
