"""`rocketctr bench quality`: the report's numbers follow from the raw ones, and the in-process metric path
equals the Beam eval job.

Fast tier: the direct path against the Beam job on SavedModels with known scores (weights, ties, single-class
users, rejected records), the summary against a hand computation on given raw numbers, variant configs.
Slow tier (6 tiny training runs, ~1-2 min on 2 shared cores): one real bench (fixture data, 2 seeds,
light-alone + booster-alone + rocket, 4 steps); its figures are recomputed by hand from its JSON and one of its
trained runs is re-scored with Beam.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rocketctr.bench.quality import quality_bench
from rocketctr.bench.quality import eval_scores
from rocketctr.bench.quality.summary import markdown, summarize
from rocketctr.bench.quality.variants import VARIANTS, resolve_variants, variant_config
from tests import eval_fixtures as fx
from tests.train_helpers import CONFIG, fixture_data

FAST = ["--set", "train.max_steps=4", "--set", "train.batch_size=64", "--set", "train.validation_fraction=0.1",
        "--set", "model.light.hidden=[8]", "--set", "model.booster.hidden=[16]",
        "--set", "train.checkpoint_every_steps=0"]


def _bench_args(data: Path, out: Path, root: Path) -> list[str]:
    return ["--data", str(data), "--seeds", "2", "--variants", "rocket", "--out", str(out),
            "--workdir", str(root / "work"), *FAST]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    data = fixture_data(root / "data", rows=800)
    out = root / "report" / "q.md"
    assert quality_bench.main(_bench_args(data, out, root)) == 0
    return data, out, json.loads(out.with_suffix(".json").read_text())


def _mean(xs):
    return sum(xs) / len(xs)


def _paired(a: dict, b: dict) -> tuple[float, float]:
    """Hand computation: mean paired difference and its t (sample std)."""
    d = [a[s] - b[s] for s in sorted(a)]
    m = _mean(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    return m, m / (sd / math.sqrt(len(d)))


@pytest.mark.slow
def test_report_and_json_have_every_variant_seed_and_column(bench):
    _data, out, doc = bench
    assert doc["variants"] == ["light_alone", "booster_alone", "rocket"]
    assert sorted((r["variant"], r["seed"]) for r in doc["runs"]) == sorted(
        (v, s) for v in doc["variants"] for s in (0, 1))
    for r in doc["runs"]:
        towers = {"light_alone": {"light"}, "booster_alone": {"booster"}, "rocket": {"light", "booster"}}
        assert set(r["metrics"]) == towers[r["variant"]]
        for m in r["metrics"].values():
            assert 0.0 < m["auc"] < 1.0 and 0.0 < m["gauc"] < 1.0 and m["logloss"] > 0
            assert m["impressions"] == doc["eval_rows"] > 0
        assert r["train_seconds"] > 0 and r["steps"] == 4
    md = out.read_text()
    gap_at, table_at = md.index("Booster-minus-light gap"), md.index("| variant | seeds | AUC | GAUC | logloss |")
    assert gap_at < table_at  # the gap comes first
    for col in ("dAUC vs light-alone", "dGAUC", "dlogloss", "gap recovered (AUC)", "gap recovered (GAUC)",
                "booster AUC", "train s", "time x light-alone"):
        assert col in md
    served, calibration = md.split("## 3. Calibration", 1)
    assert served.count("\n| rocket |") == 1 and "| light_alone |" in served
    assert "| booster_alone (booster net) |" in served
    assert calibration.count("\n| rocket |") == 1  # before / after for every variant's served net


@pytest.mark.slow
def test_gap_paired_t_and_gap_fraction_match_a_hand_computation(bench):
    _data, _out, doc = bench
    runs = {(r["variant"], r["seed"]): r for r in doc["runs"]}
    summary = {row["variant"]: row for row in doc["summary"]["variants"]}
    for metric in ("auc", "gauc", "logloss"):
        light = {s: runs["light_alone", s]["metrics"]["light"][metric] for s in (0, 1)}
        boost = {s: runs["booster_alone", s]["metrics"]["booster"][metric] for s in (0, 1)}
        rocket = {s: runs["rocket", s]["metrics"]["light"][metric] for s in (0, 1)}
        gap, gap_t = _paired(boost, light)
        got = doc["summary"]["gap"][metric]["gap"]
        assert got["mean"] == pytest.approx(gap, abs=1e-12) and got["t"] == pytest.approx(gap_t, rel=1e-9)
        d, t = _paired(rocket, light)
        row = summary["rocket"]["metrics"][metric]
        assert row["diff_vs_light_alone"]["mean"] == pytest.approx(d, abs=1e-12)
        assert row["diff_vs_light_alone"]["t"] == pytest.approx(t, rel=1e-9)
        booster_better = gap < 0.0 if metric == "logloss" else gap > 0.0
        if booster_better:  # a share of the gap only means something when there is a gap to recover
            assert row["gap_recovered"] == pytest.approx(d / gap, rel=1e-9)
        else:
            assert row["gap_recovered"] is None
        assert row["mean"] == pytest.approx(_mean(list(rocket.values())), abs=1e-12)
    cost = {v: _mean([runs[v, s]["train_seconds"] for s in (0, 1)]) for v in ("light_alone", "rocket")}
    assert summary["rocket"]["time_ratio"] == pytest.approx(cost["rocket"] / cost["light_alone"], rel=1e-9)
    booster_auc = _mean([runs["rocket", s]["metrics"]["booster"]["auc"] for s in (0, 1)])
    assert summary["rocket"]["booster_auc"]["mean"] == pytest.approx(booster_auc, abs=1e-12)


@pytest.mark.slow
def test_direct_metrics_equal_the_beam_eval_job_on_a_trained_run(bench, tmp_path):
    data, _out, doc = bench
    run = Path(next(r["run_dir"] for r in doc["runs"] if r["variant"] == "rocket"))
    # one example per model call on both sides: identical model outputs, so any difference is the metric code
    direct = eval_scores.score_run_direct(run, eval_scores.load_eval_set(data), batch_size=1)
    beam = eval_scores.score_run_beam(run, data, tmp_path / "eval", batch_size=1, beam_args=["--runner=FnApiRunner"])
    assert set(direct) == set(beam) == {"light", "booster"}
    for tower in direct:
        for key in ("auc", "gauc", "logloss", "impressions", "clicks", "users_used", "users_total",
                    "ctr_predicted", "calibration"):
            assert direct[tower][key] == pytest.approx(beam[tower][key], rel=1e-12, abs=1e-12), (tower, key)
    # and the bench's own (batched) scores of that run are the same model's metrics up to float32 batch rounding
    bench_scores = next(r for r in doc["runs"] if r["variant"] == "rocket" and r["run_dir"] == str(run))["metrics"]
    assert eval_scores.max_difference(bench_scores, beam) < 1e-6


def test_direct_metrics_equal_the_beam_eval_job(tmp_path):
    """Weighted rows, tied scores, single-class users, a row without a user and a bad label: every metric of
    both towers of a run dir is the same number on both paths. One example per model call on both sides:
    TF's float32 kernels (even sigmoid) may round a row 1 ulp differently inside a different batch, and
    RunInference batches dynamically, so equal batches are what makes the model outputs comparable."""
    no_user = fx.example({"clk": 1.0, "user_id": "", "pid": "p2", "x": 0.3, "w": 1.0}, weighted=True)
    bad_label = fx.example({"clk": 2.0, "user_id": "u3", "pid": "p1", "x": 0.1, "w": 1.0}, weighted=True)
    data = fx.write_data(tmp_path / "data", fx.frame(rows=300), weighted=True, extra_records=[no_user, bad_label])
    run = fx.write_run(tmp_path / "run", "rocket", "rocket", 0, (1.2, -0.9, 0.4), (1.5, -1.0, 0.0))
    eval_set = eval_scores.load_eval_set(data)
    assert len(eval_set) == 301 and sum(eval_set.rejected.values()) == 1
    direct = eval_scores.score_run_direct(run, eval_set, batch_size=1)
    beam = eval_scores.score_run_beam(run, data, tmp_path / "eval", batch_size=1, beam_args=["--runner=FnApiRunner"])
    assert set(direct) == set(beam) == {"light", "booster"}
    for tower in direct:
        assert direct[tower]["impressions"] == 301 and direct[tower]["impressions_no_group"] == 1
        assert direct[tower]["users_used"] < direct[tower]["users_total"]  # single-class users excluded
        for key in ("auc", "gauc", "logloss", "auc_max_bucket_error", "impressions", "weight", "clicks",
                    "users_used", "users_total", "impressions_used", "weight_used", "ctr_predicted", "calibration"):
            assert direct[tower][key] == pytest.approx(beam[tower][key], rel=1e-12, abs=1e-12), (tower, key)
    assert eval_scores.max_difference(direct, beam) < 1e-12
    assert direct["light"]["auc"] != direct["booster"]["auc"]  # two different models really were scored


def test_summary_and_table_match_a_hand_computation():
    """Raw numbers in, every derived figure out, checked against the formulas by hand."""
    raw = {("light_alone", 0): 0.700, ("light_alone", 1): 0.710, ("light_alone", 2): 0.705,
           ("booster_alone", 0): 0.760, ("booster_alone", 1): 0.775, ("booster_alone", 2): 0.760,
           ("rocket", 0): 0.730, ("rocket", 1): 0.731, ("rocket", 2): 0.735}
    secs = {"light_alone": 10.0, "booster_alone": 40.0, "rocket": 15.0}
    runs = [{"variant": v, "seed": s, "train_seconds": secs[v] + s,
             "metrics": {t: {"auc": a, "gauc": a - 0.05, "logloss": 1.0 - a}
                         for t in (["booster"] if v == "booster_alone" else ["light", "booster"] if v == "rocket"
                                   else ["light"])}}
            for (v, s), a in raw.items()]
    summary = summarize(runs)
    light = {s: raw["light_alone", s] for s in range(3)}
    gap, gap_t = _paired({s: raw["booster_alone", s] for s in range(3)}, light)  # 0.06, 0.065, 0.055
    assert gap == pytest.approx(0.06) and summary["gap"]["auc"]["gap"]["t"] == pytest.approx(gap_t)
    assert summary["gap"]["logloss"]["gap"]["mean"] == pytest.approx(-0.06)
    rocket = next(r for r in summary["variants"] if r["variant"] == "rocket")
    d, t = _paired({s: raw["rocket", s] for s in range(3)}, light)  # 0.030, 0.021, 0.030
    assert rocket["metrics"]["auc"]["diff_vs_light_alone"]["mean"] == pytest.approx(d)
    assert rocket["metrics"]["auc"]["diff_vs_light_alone"]["t"] == pytest.approx(t)
    assert rocket["metrics"]["auc"]["gap_recovered"] == pytest.approx(0.027 / 0.06)
    assert rocket["metrics"]["logloss"]["gap_recovered"] == pytest.approx(0.027 / 0.06)  # both signs flip
    assert rocket["time_ratio"] == pytest.approx(16.0 / 11.0)
    assert rocket["booster_auc"]["mean"] == pytest.approx(0.732)
    md = markdown(summary, ["- header"])
    row = next(line for line in md.splitlines() if line.startswith("| rocket |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["rocket", "0,1,2", f"0.7320 +- {0.0026458:.4f}"]
    assert cells[5] == f"+0.0270 (t={t:.2f})" and cells[8] == "45%" and cells[12] == "1.45"
    assert "AUC gap +0.0600" in md and md.index("gap (booster - light)") < md.index("| rocket |")


def test_no_gap_recovered_share_when_the_booster_is_not_better():
    """A booster worse than light-alone (negative gap) has no gap to recover: no misleading percentages."""
    raw = {("light_alone", 0): 0.72, ("light_alone", 1): 0.73, ("booster_alone", 0): 0.71,
           ("booster_alone", 1): 0.72, ("rocket", 0): 0.725, ("rocket", 1): 0.735}
    runs = [{"variant": v, "seed": s, "train_seconds": 1.0,
             "metrics": {t: {"auc": a, "gauc": a, "logloss": 1.0 - a}
                         for t in (["booster"] if v == "booster_alone" else ["light", "booster"] if v == "rocket"
                                   else ["light"])}}
            for (v, s), a in raw.items()]
    summary = summarize(runs)
    rocket = next(r for r in summary["variants"] if r["variant"] == "rocket")
    assert all(rocket["metrics"][m]["gap_recovered"] is None for m in ("auc", "gauc", "logloss"))
    assert "does NOT beat the light net" in markdown(summary, ["- header"])


def test_the_validation_based_choice_is_reported_against_light_alone():
    """Section 4: per seed the light net with the best validation AUC (never the LR floor, never the booster) is
    what would be served; its eval AUC is paired against light-alone's."""
    # (variant, seed): (validation AUC, eval AUC)
    raw = {("light_alone", 0): (0.70, 0.71), ("light_alone", 1): (0.72, 0.70),
           ("lr_floor", 0): (0.99, 0.99), ("lr_floor", 1): (0.99, 0.99),
           ("booster_alone", 0): (0.99, 0.99), ("booster_alone", 1): (0.99, 0.99),
           ("rocket", 0): (0.75, 0.74), ("rocket", 1): (0.71, 0.73)}
    runs = [{"variant": v, "seed": s, "train_seconds": 1.0, "validation": {"best": val},
             "metrics": {("booster" if v == "booster_alone" else "light"): {"auc": ev, "gauc": ev, "logloss": 0.5}}}
            for (v, s), (val, ev) in raw.items()]
    vc = summarize(runs)["validation_choice"]
    assert vc["candidates"] == ["light_alone", "rocket"]
    assert vc["picks"] == {0: "rocket", 1: "light_alone"}  # seed 1: rocket loses on validation, light-alone served
    assert vc["diff_vs_light_alone"]["mean"] == pytest.approx((0.74 - 0.71 + 0.0) / 2)
    md = markdown(summarize(runs), ["- header"])
    assert "## 4. The net a validation-based choice serves" in md and "seed 0: rocket, seed 1: light_alone" in md


def test_calibration_before_and_after_is_summarised_per_served_net():
    """Section 3 shows the served score's calibration next to the raw logit's, mean over seeds."""
    cal = {("light_alone", 0): (1.20, 1.01), ("light_alone", 1): (1.10, 0.99),
           ("booster_alone", 0): (0.90, 1.02), ("booster_alone", 1): (0.80, 1.00)}
    runs = [{"variant": v, "seed": s, "train_seconds": 1.0,
             "metrics": {("booster" if v == "booster_alone" else "light"): {
                 "auc": 0.7, "gauc": 0.7, "logloss": 0.40, "logloss_uncalibrated": 0.45,
                 "calibration_uncalibrated": before, "calibration": after}}}
            for (v, s), (before, after) in cal.items()]
    summary = summarize(runs)
    light = next(r for r in summary["variants"] if r["variant"] == "light_alone")
    assert light["calibration"]["calibration_uncalibrated"]["mean"] == pytest.approx(1.15)
    assert light["calibration"]["calibration"]["mean"] == pytest.approx(1.00)
    md = markdown(summary, ["- header"])
    section = md[md.index("## 3. Calibration"):]
    line = next(x for x in section.splitlines() if x.startswith("| booster_alone (booster net) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].startswith("0.8500") and cells[2].startswith("1.0100")
    assert cells[3].startswith("0.4500") and cells[4].startswith("0.4000")


@pytest.mark.slow
def test_a_rerun_reuses_finished_runs_and_reports_the_same_numbers(bench, capsys):
    data, out, doc = bench
    root = Path(doc["runs"][0]["run_dir"]).parents[3]
    again = out.with_name("again.md")
    assert quality_bench.main(_bench_args(data, again, root)) == 0
    assert capsys.readouterr().out.count("reusing finished run") == 6
    assert all((Path(r["run_dir"]) / quality_bench.SCORES_FILE).is_file() for r in doc["runs"])  # not re-scored
    redo = json.loads(again.with_suffix(".json").read_text())
    assert redo["summary"] == doc["summary"]


def test_kd_variant_gets_the_same_seed_booster_run_as_teacher_and_cost(tmp_path):
    kd = next(v for v in resolve_variants(["kd_two_stage"]) if v.name == "kd_two_stage")
    cfg = variant_config(CONFIG, kd, 3, {"train": {"mode": "light", "seed": 9}}, tmp_path / "booster_alone/seed3")
    # the variant wins over --set; the config's kd experiment: MSE on logits at weight 1 (chosen on validation)
    assert (cfg.train.mode, cfg.train.seed, cfg.model.loss.hint, cfg.model.loss.hint_weight) == \
        ("kd", 3, "mse_logits", 1.0)
    assert cfg.train.teacher_run == str(tmp_path / "booster_alone/seed3")
    with pytest.raises(ValueError, match="teacher"):
        variant_config(CONFIG, kd, 0)
    runs = [{"variant": v, "seed": s, "train_seconds": t, "metrics": {tw: {"auc": a, "gauc": a, "logloss": 1 - a}
                                                                        for tw in towers}}
            for v, s, t, a, towers in [("light_alone", 0, 10.0, 0.70, ["light"]), ("light_alone", 1, 12.0, 0.71,
                                                                                      ["light"]),
                                       ("booster_alone", 0, 30.0, 0.80, ["booster"]),
                                       ("booster_alone", 1, 34.0, 0.79, ["booster"]),
                                       ("kd_two_stage", 0, 11.0, 0.74, ["light"]),
                                       ("kd_two_stage", 1, 13.0, 0.73, ["light"])]]
    row = next(r for r in summarize(runs)["variants"] if r["variant"] == "kd_two_stage")
    assert row["train_seconds"]["mean"] == pytest.approx((41.0 + 47.0) / 2)
    assert row["time_ratio"] == pytest.approx(44.0 / 11.0)
    assert row["booster_auc"]["mean"] == pytest.approx(0.795)  # its teacher's
    assert row["metrics"]["auc"]["gap_recovered"] == pytest.approx(0.03 / 0.09)


def test_rocket_then_kd_distils_the_same_seed_rocket_run_and_pays_for_it():
    names = [v.name for v in resolve_variants(["rocket_then_kd"])]
    assert names.index("rocket") < names.index("rocket_then_kd")  # its teacher is trained first
    student = VARIANTS["rocket_then_kd"]
    assert (student.mode, student.teacher) == ("kd", "rocket")
    runs = [{"variant": v, "seed": 0, "train_seconds": t,
             "metrics": {tw: {"auc": a, "gauc": a, "logloss": 1 - a} for tw in towers}}
            for v, t, a, towers in [("light_alone", 10.0, 0.70, ["light"]), ("booster_alone", 30.0, 0.80, ["booster"]),
                                    ("rocket", 25.0, 0.72, ["light", "booster"]),
                                    ("rocket_then_kd", 11.0, 0.76, ["light"])]]
    row = next(r for r in summarize(runs)["variants"] if r["variant"] == "rocket_then_kd")
    assert row["train_seconds"]["mean"] == pytest.approx(36.0)  # rocket + student
    assert row["booster_auc"]["mean"] == pytest.approx(0.72)  # the rocket run's co-trained booster


def test_bad_variant_and_missing_data_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown nope"):
        resolve_variants(["rocket", "nope"])
    assert quality_bench.main(["--data", str(tmp_path / "absent"), "--workdir", str(tmp_path / "w"),
                               "--out", str(tmp_path / "q.md")]) == 2
    assert "absent" in capsys.readouterr().err


def test_run_identity_ignores_the_hint_settings_only_for_a_tower_trained_alone():
    from rocketctr.bench.quality.quality_bench import run_identity

    def cfg(mode, weight, hidden=64):
        return {"train": {"mode": mode, "seed": 0},
                "model": {"light": {"hidden": [hidden]}, "loss": {"hint_weight": weight}}}

    for mode in ("light", "booster"):
        assert run_identity(cfg(mode, 0.1)) == run_identity(cfg(mode, 0.3))  # the baselines are reused
        assert run_identity(cfg(mode, 0.1)) != run_identity(cfg(mode, 0.1, hidden=32))  # anything else is not
    for mode in ("rocket", "kd"):
        assert run_identity(cfg(mode, 0.1)) != run_identity(cfg(mode, 0.3))
