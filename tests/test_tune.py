"""`rocketctr tune`: the seeded trial list, validation-only scoring, resume, the report and the written config;
and model.embedding_dim, the width override a search varies."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

import models.tune as tune_lib
from common.typed_yaml import deep_merge
from models.config import ConfigError, RunConfig, TrainConfig, load_config, parse_override
from rocketctr.commands import tune as tune_cmd
from tests.train_helpers import CONFIG, fixture_data

# tiny towers and one short epoch per trial: the search machinery is under test, not the model
SETS = ["model.light.hidden=[8]", "model.booster.hidden=[16, 8]", "train.batch_size=64", "train.epochs=1",
        "train.validation_fraction=0.2", "train.shuffle_buffer=256", "train.checkpoint_every_steps=1000",
        "train.log_every_steps=1000"]
SPACE = {"common": {"train.embedding_optimizer": [{"name": "adagrad", "learning_rate": 0.2}],
                    "train.batch_size": [64, 128], "train.epochs": [1], "train.early_stopping_patience": None,
                    "model.embedding_dim": [4]},
         "light": {"train.light_optimizer": [{"name": "adam", "learning_rate": 0.003},
                                             {"name": "adam", "learning_rate": 0.01}]},
         "booster": {"train.booster_optimizer": [{"name": "adam", "learning_rate": 0.003},
                                                 {"name": "adam", "learning_rate": 0.01}],
                     "model.booster.dropout": [0.0, 0.1], "model.booster.l2": []}}


def _overrides(sets=SETS) -> dict:
    over: dict = {}
    for text in sets:
        over = deep_merge(over, parse_override(text))
    return over


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tune_cmd.add_arguments(p)
    return p.parse_args(list(argv))


class Counter:
    """Stands in for models.tune.train: counts the trials that really train (or forbids training)."""

    def __init__(self, real=None):
        self.real, self.calls = real, []

    def __call__(self, cfg, data_dir, run_dir, **kw):
        self.calls.append(run_dir)
        if self.real is None:
            raise AssertionError(f"trial {run_dir} was trained again")
        return self.real(cfg, data_dir, run_dir, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"root": root, "data": fixture_data(root / "data", rows=1000), "space": space,
            "work": root / "work", "written": root / "tuned.yaml"}


def _cli_argv(s: dict, *extra: str) -> list[str]:
    argv = ["--data", str(s["data"]), "--config", str(CONFIG), "--mode", "both", "--trials", "2", "--seed", "3",
            "--workdir", str(s["work"]), "--out", str(s["work"] / "tune.md"), "--space", str(s["space"]),
            "--write-config", str(s["written"])]
    for text in SETS:
        argv += ["--set", text]
    return argv + list(extra)


@pytest.fixture(scope="module")
def tuned(setup):
    """One CLI call: --mode both, 2 trials per search (4 trainings), the module's only training."""
    counter = Counter(tune_lib.train)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune_lib, "train", counter)
        rc = tune_cmd.main(_args(*_cli_argv(setup)))
    return {**setup, "rc": rc, "trained": list(counter.calls)}


def _rows(work, search) -> list[dict]:
    return [json.loads(line) for line in (work / search / "trials.jsonl").read_text().splitlines()]


def test_cli_runs_both_searches_and_writes_the_table(tuned, capsys):
    assert tuned["rc"] == 0
    assert len(tuned["trained"]) == 4
    md = (tuned["work"] / "tune.md").read_text()
    assert "## light search (validation light_auc)" in md and "## booster search (validation booster_auc)" in md
    assert "--mode both --trials 2 --seed 3" in md and "eval split is not used" in md
    for search in ("light", "booster"):
        rows = _rows(tuned["work"], search)
        assert [r["trial"] for r in rows] == [0, 1]
        for r in rows:
            assert r["config"]["train"]["mode"] == search
            assert 0.0 < r["validation_auc"] < 1.0 and r["best_epoch"] == 1
            assert r["train_seconds"] > 0 and r["examples_per_sec"] > 0
            assert (tuned["work"] / search / f"trial_{r['trial']}" / "metrics.json").is_file()
            m = json.loads((tuned["work"] / search / f"trial_{r['trial']}" / "metrics.json").read_text())
            assert r["validation_auc"] == m["validation"]["best"]  # the validation slice, never m["eval"]
            assert r["validation_logloss"] == m["calibration"][search]["validation"]["logloss_before"] > 0
        ranked = sorted(rows, key=lambda r: -r["validation_auc"])
        table = [line for line in md.split(f"## {search} search")[1].split("##")[0].splitlines()
                 if line.startswith("| 1 ") or line.startswith("| 2 ")]
        assert table[0].split(" | ")[1].split()[0] == str(ranked[0]["trial"])  # sorted by validation AUC


def test_written_config_loads_with_the_chosen_values(tuned):
    text = tuned["written"].read_text()
    assert text.startswith("# Written by `rocketctr tune`")
    assert tune_cmd.command_line(_args(*_cli_argv(tuned))) in text and "light search: validation light_auc" in text
    best = {s: max(_rows(tuned["work"], s), key=lambda r: (r["validation_auc"], -r["trial"]))
            for s in ("light", "booster")}
    cfg = load_config(tuned["written"])
    light, booster = best["light"]["config"], best["booster"]["config"]
    assert cfg.model.embedding_dim == light["model"]["embedding_dim"]
    assert cfg.train.batch_size == light["train"]["batch_size"]
    assert cfg.train.light_optimizer.learning_rate == light["train"]["light_optimizer"]["learning_rate"]
    assert cfg.train.booster_optimizer.learning_rate == booster["train"]["booster_optimizer"]["learning_rate"]
    assert cfg.model.booster.dropout == booster["model"]["booster"]["dropout"]
    assert cfg.model.light.hidden == (8,) and cfg.train.validation_fraction == 0.2  # the --set the trials ran with
    assert cfg.train.mode == "rocket"  # the input's base mode: the search forced a mode per trial only
    written, original = yaml.safe_load(text), yaml.safe_load(CONFIG.read_text())
    assert written["experiments"] == original["experiments"]
    assert load_config(tuned["written"], "booster_only").model.embedding_dim == cfg.model.embedding_dim


def test_the_booster_search_runs_on_the_light_searchs_shared_choice(setup, monkeypatch):
    """--mode both: every booster trial (its trial 0 included) trains with the shared settings the light search
    chose, so the booster's knobs are tuned in the setting the written config will use."""
    from models.config import config_to_dict

    plans = {}

    def fake_search(search, plan, search_dir, data, trials, echo):  # light trial 1 wins; nothing trains
        plans[search] = plan
        return [{"trial": t.index, "config": config_to_dict(t.config), "validation_auc": 0.6 + 0.1 * t.index,
                 "metric": f"{search}_auc", "validation_logloss": None, "best_epoch": 1, "train_seconds": 1.0,
                 "examples_per_sec": 1.0} for t in plan], 0

    monkeypatch.setattr(tune_lib, "_run_search", fake_search)
    res = tune_lib.tune(CONFIG, setup["data"], "both", 2, 3, setup["root"] / "fake", out=None,
                        overrides=_overrides(), space=setup["space"])
    winner = plans["light"][1].config
    assert winner.model.embedding_dim == 4  # differs from the base's (the spec's widths)
    assert plans["light"][0].config.model.embedding_dim is None
    for t in plans["booster"]:
        assert t.config.model.embedding_dim == 4 and t.config.train.batch_size == winner.train.batch_size
        assert t.config.train.embedding_optimizer == winner.train.embedding_optimizer
    assert res.chosen["model"]["embedding_dim"] == 4


def test_all_mode_searches_co_training_last_on_both_choices(setup, monkeypatch):
    """--mode all: light, booster, then a rocket-mode search over the hint settings whose trials carry what the
    first two chose; the rocket search decides only its own keys and is scored on the light net."""
    from models.config import config_to_dict

    plans = {}

    def fake_search(search, plan, search_dir, data, trials, echo):  # the last trial of each search wins
        plans[search] = plan
        return [{"trial": t.index, "config": config_to_dict(t.config), "validation_auc": 0.6 + 0.01 * t.index,
                 "metric": f"{'light' if search == 'rocket' else search}_auc", "validation_logloss": None,
                 "best_epoch": 1, "train_seconds": 1.0, "examples_per_sec": 1.0} for t in plan], 0

    monkeypatch.setattr(tune_lib, "_run_search", fake_search)
    res = tune_lib.tune(CONFIG, setup["data"], "all", 3, 3, setup["root"] / "fake_all", out=None,
                        overrides=_overrides(), space=setup["space"])
    assert list(plans) == ["light", "booster", "rocket"]
    light, booster = plans["light"][-1].config, plans["booster"][-1].config
    for t in plans["rocket"]:
        c = t.config
        assert c.train.mode == "rocket"
        assert c.train.batch_size == light.train.batch_size and c.model.embedding_dim == light.model.embedding_dim
        assert c.train.booster_optimizer == booster.train.booster_optimizer
        assert c.model.booster.dropout == booster.model.booster.dropout
    winner = plans["rocket"][-1].config
    assert res.chosen["model"]["loss"]["hint_weight"] == winner.model.loss.hint_weight
    assert res.chosen["model"]["share_embeddings"] == winner.model.share_embeddings


def test_moot_co_training_settings_are_not_separate_trials():
    """hint_into_shared means nothing without a hint or without shared tables: such draws are folded to False,
    so the rocket search never spends two trials on one model."""
    base = tune_lib.base_config(CONFIG, _overrides())
    trials = tune_lib.trial_list(base, "rocket", tune_lib.load_space(None), ("rocket",), 0, 11)
    assert len(trials) == 11  # 3 weights x 2 + (weight 0) + 4 unshared = 11 distinct models
    for t in trials[1:]:
        p = t.params
        if p["model.loss.hint_weight"] == 0.0 or p["model.share_embeddings"] is False:
            assert p["model.loss.hint_into_shared"] is False
        assert t.config.train.mode == "rocket"
    with pytest.raises(ConfigError, match="yielded only 11 distinct trials"):
        tune_lib.trial_list(base, "rocket", tune_lib.load_space(None), ("rocket",), 0, 12)


def test_rerun_trains_nothing_even_without_the_results_file(tuned):
    forbid = Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune_lib, "train", forbid)
        again = tune_lib.tune(CONFIG, tuned["data"], "both", 2, 3, tuned["work"], overrides=_overrides(),
                              space=tuned["space"])
        assert again.trained == 0 and not forbid.calls
        assert again.best["light"]["trial"] == max(_rows(tuned["work"], "light"),
                                                   key=lambda r: (r["validation_auc"], -r["trial"]))["trial"]
        # killed between a run's end and its row: the finished run folders are enough
        for search in ("light", "booster"):
            (tuned["work"] / search / "trials.jsonl").unlink()
        rebuilt = tune_lib.tune(CONFIG, tuned["data"], "both", 2, 3, tuned["work"], overrides=_overrides(),
                                space=tuned["space"])
    assert rebuilt.trained == 0 and not forbid.calls
    assert {s: [r["validation_auc"] for r in rows] for s, rows in rebuilt.rows.items()} == \
        {s: [r["validation_auc"] for r in rows] for s, rows in again.rows.items()}
    assert len(_rows(tuned["work"], "light")) == 2


def test_a_changed_config_is_not_reused(tuned):
    base = tune_lib.base_config(CONFIG, _overrides(SETS + ["train.shuffle_buffer=128"]))
    space = tune_lib.load_space(tuned["space"])
    trial = tune_lib.trial_list(base, "light", space, ("common", "light"), 3, 2)[1]
    rows = tune_lib._read_rows(tuned["work"] / "light" / "trials.jsonl")
    assert tune_lib.finished_row(tuned["work"] / "light", trial, str(tuned["data"].resolve()), rows) is None


def test_embedding_dim_override_reaches_the_trained_and_reloaded_model(tuned):
    """A trial with model.embedding_dim 4 trained 4-wide tables, and load_run (what the export rebuilds from)
    restores them shape for shape; the run's own light SavedModel was exported from that model."""
    from models.run import load_run

    run = tuned["work"] / "light" / "trial_1"
    assert json.loads((run / "config.json").read_text())["config"]["model"]["embedding_dim"] == 4
    loaded = load_run(run)
    assert {b.dim for b in loaded.model.embedder.banks.values()} == {4}
    assert {f.embedding_dim for f in loaded.spec.features} != {4}  # the data's spec itself is untouched
    assert (run / "towers" / "light" / "saved_model.pb").is_file()


def test_embedding_dim_switches_the_table_widths(setup):
    import feature_specs
    from models.config import ModelConfig, TowerConfig
    from models.rocket import build_model

    spec = feature_specs.load_spec("synthetic")
    small = {"light": TowerConfig("mlp", (4,)), "booster": TowerConfig("mlp", (4,))}

    def widths(dim):
        cfg = RunConfig(model=ModelConfig(embedding_dim=dim, **small), train=TrainConfig(mode="rocket"))
        model = build_model(spec, setup["data"], cfg)
        return {b.dim for b in model.embedder.banks.values()}, {tuple(b.table.shape) for b in
                                                               model.embedder.banks.values()}

    spec_dims = {f.embedding_dim for f in spec.features}
    assert widths(None)[0] == spec_dims
    dims, shapes = widths(5)  # a width the spec never uses
    assert dims == {5} and all(s[1] == 5 for s in shapes) and 5 not in spec_dims
    with pytest.raises(ConfigError, match="model.embedding_dim must be in 1..1024"):
        load_config(CONFIG, None, {"model": {"embedding_dim": 0}})


def test_trial_list_is_seeded_and_independent_of_the_count():
    base = tune_lib.base_config(CONFIG)
    space = tune_lib.load_space()
    sections = ("common", "booster")
    few = tune_lib.trial_list(base, "booster", space, sections, 7, 3)
    many = tune_lib.trial_list(base, "booster", space, sections, 7, 12)
    assert [t.params for t in few] == [t.params for t in many[:3]]
    assert [t.params for t in tune_lib.trial_list(base, "booster", space, sections, 7, 12)] == \
        [t.params for t in many]  # same seed, same list
    assert [t.params for t in tune_lib.trial_list(base, "booster", space, sections, 8, 12)] != \
        [t.params for t in many]
    assert many[0].params == {} and many[0].config.train.batch_size == base.train.batch_size
    assert all(t.config.train.mode == "booster" for t in many)
    idents = {json.dumps({**tune_lib.config_to_dict(t.config), "name": None}, sort_keys=True) for t in many}
    assert len(idents) == 12  # no trial repeats another (or the base)
    for t in many[1:]:
        assert set(t.params) == set(space["common"]) | set(space["booster"])
        if t.params["train.epochs"] == 1:
            assert t.params["train.early_stopping_patience"] == 0
    with pytest.raises(ConfigError, match="--trials 5: the light search space"):
        tiny = {"common": {"train.batch_size": [64, 128]}, "light": {}, "booster": {}}
        tune_lib.trial_list(base, "light", tiny, ("common", "light"), 0, 5)


def test_validation_fraction_zero_and_bad_space_keys_are_clear_errors(setup, tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.validation_fraction: tune scores every trial"):
        tune_lib.tune(CONFIG, setup["data"], "light", 2, 0, tmp_path, overrides={"train": {
            "validation_fraction": 0.0}})
    argv = _cli_argv({**setup, "work": tmp_path / "w"}, "--set", "train.validation_fraction=0")
    assert tune_cmd.main(_args(*argv)) == 1
    assert "train.validation_fraction" in capsys.readouterr().err
    bad = tmp_path / "bad_space.yaml"
    bad.write_text("common: {train.batch_sise: [64]}\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        tune_lib.tune(CONFIG, setup["data"], "light", 2, 0, tmp_path, overrides=_overrides(), space=bad)
    assert not list(tmp_path.glob("light/trial_*"))  # nothing trained before the checks


def test_the_cli_offers_exactly_the_library_modes():
    """The CLI keeps its own copy of the modes (its --help must not import TensorFlow): it must not drift."""
    assert tune_cmd.TUNE_MODES == tune_lib.TUNE_MODES
    assert set(tune_lib.SEARCHES) == set(tune_lib.TUNE_MODES)
