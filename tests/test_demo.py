"""The main job end to end on a small simulated log: every stage runs and the report links real results."""

from __future__ import annotations

import json
import socket

from rocketctr.demo import run_demo


def test_demo_runs_every_stage_on_a_small_log(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", rows=20_000, candidates=50, users=2,
                      echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    out = result.out_dir
    assert list(result.stages) and len(result.stages) == 8
    assert any(line.startswith("[8/8] report: done") for line in lines)
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["rows"]["read"] == 20_000
    for run in ("light", "rocket", "distilled"):
        assert (out / "runs" / run / "metrics.json").exists()
    # the served light net is the one with the better validation AUC, and the eval scored every candidate
    val = {r: json.loads((out / "runs" / r / "metrics.json").read_text())["validation"]["best"]
           for r in ("rocket", "distilled", "light")}
    assert result.exported == max(val, key=val.get)
    assert json.loads((out / "models" / "rocketctr" / "1" / "assets.extra" / "rocketctr.json").read_text())["run"][
        "run_dir"].endswith(result.exported)
    assert (out / "models" / "rocketctr" / "1" / "saved_model.pb").exists()
    models = result.eval_metrics["models"]
    assert {m["tower"] for m in models.values()} >= {"light", "booster"}
    assert {m["role"] for m in models.values()} == ({"candidate", "baseline", "reference"}
                                                     if result.exported != "light" else {"candidate", "reference"})
    assert sum(m["tower"] == "light" for m in models.values()) == 3  # light-alone, rocket-light, student
    for m in models.values():
        assert 0.0 <= m["metrics"]["auc"] <= 1.0 and m["metrics"]["logloss"] > 0
    assert result.latency_ms["p50"] > 0 and result.latency_ms["p99"] >= result.latency_ms["p50"]
    report = (out / "report.md").read_text()
    assert "eval/report.md" in report and "models/rocketctr/1" in report
    assert (out / "logs" / "2.log").stat().st_size > 0  # Beam's chatter went to the stage log
    # The server process was stopped: its port no longer accepts connections.
    port = int(result.latency_ms["target"].rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_pick_light_net_takes_the_best_validation_auc_and_never_eval(tmp_path):
    from rocketctr.demo import pick_light_net

    runs = {}
    for name, val in (("rocket", 0.73), ("distilled", 0.75), ("light", 0.74), ("novalid", None)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        doc = {"validation": {"best": val}, "eval": {"light": {"auc": 0.99 if name == "light" else 0.5}}}
        (runs[name] / "metrics.json").write_text(json.dumps(doc))
    assert pick_light_net(runs, ("rocket", "distilled", "light"))[0] == "distilled"  # eval AUC is ignored
    assert pick_light_net(runs, ("rocket", "light"))[0] == "light"  # a transfer that loses is not shipped
    assert pick_light_net(runs, ("novalid", "rocket"))[0] == "rocket"  # no validation figure: never picked
    assert pick_light_net(runs, ("novalid",))[0] == "novalid"  # nothing to compare: the first
