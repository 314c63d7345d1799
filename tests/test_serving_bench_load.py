"""`rocketctr bench serve` under load (rocketctr/bench/serve_load.py) in its quick mode: the printed structure
(one row per signature and batching mode, the serving_default case, every target line with its verdict) and
zero errors from real client processes against a real `rocketctr serve`. No figure is checked: timing belongs
to the bench, not to unit tests."""

from __future__ import annotations

import json
import re

import pytest

import feature_specs
from rocketctr import cli
from rocketctr.bench import serve_load
from test_serving_toy import save_toy


def test_quick_load_bench_prints_every_target(tmp_path, capsys):
    base = tmp_path / "models"
    save_toy(base, 1, seed=3, spec=feature_specs.load_spec("synthetic"))
    out_json = tmp_path / "load.json"
    assert cli.main(["bench", "serve", "--model-base", str(base), "--load-only", "--quick",
                     "--load-signatures", "score_packed,predict_raw", "--load-json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert rows[0].startswith("| signature | batching |")
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]
    assert [(c[0], c[1]) for c in cells] == [("score_packed", "off"), ("predict_raw", "off"),
                                             ("score_packed", "on (unbatched)"), ("predict_raw", "on"),
                                             ("serving_default", "off")]
    q = serve_load.QUICK
    assert all(c[2] == f"{q['load_clients']} x {q['load_requests']}" and c[3] == str(q["candidates"])
               for c in cells[:4])
    assert cells[4][2] == f"1 x {q['examples_requests']}"
    assert all(c[7] == "0" for c in cells), "no request may fail"
    targets = [line for line in out.splitlines() if line.startswith("target ")]
    assert len(targets) == 5  # p99 per batched-on signature, 0 errors, serving_default p99, RSS
    assert all(re.search(r", (met|NOT MET)$", t) for t in targets), targets
    assert "0 errors: 0, met" in out
    doc = json.loads(out_json.read_text())
    assert len(doc["runs"]) == 4 and doc["examples"]["signature"] == "serving_default"
    assert all(r["errors"] == {} and r["rss_warm_mb"] > 0 for r in doc["runs"])


def test_batching_flags():
    assert serve_load.batching_flags("max_batch_size=64, num_batch_threads=1") == [
        "--enable_batching", "--max-batch-size", "64", "--num-batch-threads", "1"]
    with pytest.raises(SystemExit, match="max_batch_sise"):
        serve_load.batching_flags("max_batch_sise=64")
