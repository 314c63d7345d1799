"""`rocketctr tune`: a small, seeded, resumable random search over training hyper-parameters.

Every trial is an ordinary training run (models.train.train) and is scored by `metrics.json["validation"]["best"]`:
the searched tower's AUC on the validation slice of the TRAIN split. The eval split is never used to choose
anything, so the eval numbers of the chosen config stay an honest estimate.

Why a fixed trial list: trial k depends only on (config, --set, space, mode, seed), never on --trials, so
asking for more trials later extends the same search, and a rerun can match finished trials by their full
config (WORKDIR/<search>/trials.jsonl) and train nothing twice, like the quality bench's run reuse.

--mode both runs two searches in order: the light one decides what the towers share (embedding optimizer and
width, batch, epochs/patience) plus light_optimizer, because the light net is what gets served; the booster one
then varies only the booster's own knobs (its optimizer, dropout, L2) on top of the shared settings the light
search chose (its trial 0 = the base with those settings), so they are tuned where they will be used.
--mode rocket searches co-training itself (hint weight, hint into the shared tables, shared tables at all) in
rocket mode, scored on the light net's validation AUC; --mode all runs light, booster, then rocket, each on the
previous searches' choice. A co-training setting that helps on one log can hurt on another (measured: Jester),
so the hint is tuned per log like everything else, and hint_weight 0 (plain co-training) is a candidate.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from common import fs
from common.progress import ProgressMeter, format_duration
from common.typed_yaml import deep_merge
from feature_specs import artifacts
from models.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config
from models.train import train

log = logging.getLogger("rocketctr.tune")

SECTIONS = ("common", "light", "booster", "rocket")
# search -> the space sections it varies; in both/all each search starts from the previous searches' choice
SEARCHES = {"light": [("light", ("common", "light"))], "booster": [("booster", ("common", "booster"))],
            "both": [("light", ("common", "light")), ("booster", ("booster",))],
            "rocket": [("rocket", ("rocket",))],
            "all": [("light", ("common", "light")), ("booster", ("booster",)), ("rocket", ("rocket",))]}
TUNE_MODES = tuple(SEARCHES)  # the --mode values (rocketctr/commands/tune.py keeps a TF-free copy)


def _adam(lr: float) -> dict:
    return {"name": "adam", "learning_rate": lr}


# The default search space: section -> dotted config key -> candidate values (a mapping value is deep-merged,
# so e.g. an optimizer's clipnorm is kept). `--space FILE` overrides it key by key (null or [] drops a key).
DEFAULT_SPACE: dict[str, dict[str, list]] = {
    "common": {
        "train.embedding_optimizer": [{"name": "adagrad", "learning_rate": lr} for lr in (0.01, 0.05, 0.1)]
                                     + [_adam(lr) for lr in (0.001, 0.003, 0.01)],
        "train.batch_size": [256, 512, 1024, 2048],
        "train.epochs": [1, 3, 5, 10],
        "train.early_stopping_patience": [0, 1, 2],
        "model.embedding_dim": [4, 8, 16],
    },
    "light": {"train.light_optimizer": [_adam(lr) for lr in (0.001, 0.003, 0.01)]},
    "booster": {"train.booster_optimizer": [_adam(lr) for lr in (0.001, 0.003, 0.01)],
                "model.booster.dropout": [0.0, 0.1, 0.3], "model.booster.l2": [0.0, 1e-5, 1e-4]},
    # co-training itself, scored on the light net (what is served): how hard the hint pulls, whether it reaches
    # the shared tables, and whether the towers share tables at all (the gradient block stays on)
    "rocket": {"model.loss.hint_weight": [0.0, 0.1, 0.3, 1.0], "model.loss.hint_into_shared": [False, True],
               "model.share_embeddings": [True, False]},
}


@dataclass(frozen=True)
class Trial:
    index: int  # 0 = the config's own base
    params: dict[str, Any]  # dotted key -> sampled value ({} for the base)
    config: RunConfig


@dataclass
class TuneResult:
    mode: str  # one of TUNE_MODES
    rows: dict[str, list[dict]]  # search -> one row per trial, in trial order
    best: dict[str, dict]  # search -> its best row (highest validation AUC, the lower trial on ties)
    chosen: dict  # nested config values the winners set (what --write-config folds into base)
    trained: int  # trials trained by this call (0 on a rerun of a finished search)
    markdown: str = ""
    written: Path | None = None


def _nested(key: str, value: Any) -> dict:
    """`train.batch_size`, 512 -> {"train": {"batch_size": 512}} (then merged with common.typed_yaml.deep_merge)."""
    out: Any = copy.deepcopy(value)
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _value_at(doc: dict, key: str) -> Any:
    for part in key.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def load_space(path: str | os.PathLike | None = None) -> dict[str, dict[str, list]]:
    """DEFAULT_SPACE with a YAML file's sections merged over it key by key; lists must be non-empty and unique."""
    space = copy.deepcopy(DEFAULT_SPACE)
    if path is not None:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(doc, dict) or set(doc) - set(SECTIONS):
            raise ConfigError(f"--space {path}: top level must be a mapping of {', '.join(SECTIONS)}, got "
                              f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        for section, keys in doc.items():
            if not isinstance(keys, dict):
                raise ConfigError(f"--space {path}: {section}: expected a mapping of key.path: [values]")
            for key, values in keys.items():
                if values is None or values == []:
                    space[section].pop(key, None)
                elif not isinstance(values, list):
                    raise ConfigError(f"--space {path}: {section}.{key}: expected a list of values, got {values!r}")
                else:
                    space[section][key] = values
    for section, keys in space.items():
        for key, values in keys.items():
            if key in ("train.mode", "name"):
                raise ConfigError(f"search space {section}.{key}: set by --mode / the trial, not searchable")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ConfigError(f"search space {section}.{key}: duplicate values in {values!r}")
    return space


def base_config(config: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """The config file's base with the --set overrides; the search needs a validation slice to score on."""
    cfg = load_config(config, None, overrides)
    if cfg.train.validation_fraction <= 0:
        raise ConfigError(f"train.validation_fraction: tune scores every trial on the validation slice of the train "
                          f"split, so it must be > 0 (got {cfg.train.validation_fraction}); e.g. --set "
                          f"train.validation_fraction=0.05")
    return cfg


def _trial_config(base: dict, mode: str, index: int, params: dict[str, Any], where: str) -> RunConfig:
    raw = base
    for key, value in params.items():
        raw = deep_merge(raw, _nested(key, value))
    raw = deep_merge(raw, {"name": f"tune_{mode}_trial{index}", "train": {"mode": mode}})
    cfg = config_from_dict(raw, where)
    if cfg.train.validation_fraction <= 0:
        raise ConfigError(f"{where}: train.validation_fraction must be > 0 (the trial is scored on it)")
    return cfg


def trial_list(base: RunConfig, mode: str, space: dict[str, dict[str, list]], sections: tuple[str, ...],
               seed: int, n: int) -> list[Trial]:
    """Trial 0 = base; then seeded random draws over `sections`, skipping configs already in the list.

    The draws come from one RNG stream per (mode, seed) and never depend on n, so trial k is the same for any
    n > k. A patience with a single epoch is moot and set to 0, and so is hint_into_shared without a hint or
    without shared tables, so a moot setting cannot pose as a distinct trial.
    """
    if n < 1:
        raise ConfigError(f"--trials must be >= 1, got {n}")
    keys = [(k, v) for s in sections for k, v in space[s].items()]
    raw = config_to_dict(base)
    for key, values in keys:  # every candidate checked now: a typo fails before any trial trains
        for value in values:
            try:
                config_from_dict(deep_merge(raw, _nested(key, value)))
            except ConfigError as e:
                raise ConfigError(f"search space {key} = {value!r}: {e}") from None
    trials = [Trial(0, {}, _trial_config(raw, mode, 0, {}, f"tune {mode} trial 0 (base)"))]
    seen = {json.dumps({**config_to_dict(trials[0].config), "name": None}, sort_keys=True)}
    rng = random.Random(f"rocketctr-tune/{mode}/{seed}")  # str seeds hash with sha512: stable across runs
    size = math.prod(len(v) for _, v in keys) if keys else 0
    draws = 0
    while len(trials) < n:
        draws += 1
        if not keys or draws > 200 + 100 * n:
            raise ConfigError(f"--trials {n}: the {mode} search space ({' + '.join(sections)}) has {size} points "
                              f"and yielded only {len(trials)} distinct trials; ask for fewer or widen --space")
        params = {k: rng.choice(v) for k, v in keys}
        if params.get("train.epochs") == 1 and "train.early_stopping_patience" in params:
            params["train.early_stopping_patience"] = 0
        if "model.loss.hint_into_shared" in params and (params.get("model.loss.hint_weight") == 0.0
                                                        or params.get("model.share_embeddings") is False):
            params["model.loss.hint_into_shared"] = False  # no hint, or no shared table for it to reach: moot
        k = len(trials)
        cfg = _trial_config(raw, mode, k, params, f"tune {mode} trial {k} {params}")
        ident = json.dumps({**config_to_dict(cfg), "name": None}, sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            trials.append(Trial(k, params, cfg))
    return trials


def _read_rows(path: str) -> dict[int, dict]:
    """trial index -> its last recorded row (a retrained trial appends a newer row)."""
    rows: dict[int, dict] = {}
    if fs.isfile(path):
        for line in fs.read_text(path).splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["trial"]] = row
    return rows


def _row(trial: Trial, mode: str, run: str, data_dir: str) -> dict:
    m = fs.read_json(fs.join(run, "metrics.json"))
    v = m.get("validation") or {}
    # the searched tower's validation logloss at the exported (best-epoch) weights, before its Platt layer
    tower = "booster" if mode == "booster" else "light"  # what the trial is scored on (rocket: the light net)
    fitted = (((m.get("calibration") or {}).get(tower) or {}).get("validation") or {})
    logloss = fitted.get("logloss_before")
    return {"trial": trial.index, "mode": mode, "params": trial.params, "config": config_to_dict(trial.config),
            "data_dir": data_dir, "run_dir": run, "metric": v.get("metric"),
            "validation_auc": v.get("best"), "validation_logloss": logloss, "best_epoch": v.get("best_epoch"),
            "epochs_completed": m.get("epochs_completed"), "stopped_early": m.get("stopped_early"),
            "train_seconds": m.get("train_seconds"), "wall_seconds": m.get("wall_seconds"),
            "examples_per_sec": m.get("examples_per_sec")}


def finished_row(search_dir: str, trial: Trial, data_dir: str, rows: dict[int, dict]) -> dict | None:
    """The recorded result of `trial` if one exists for exactly this config and data; else None (train it).
    A run that finished but whose row was never appended (killed in between) is recovered from its folder."""
    want = config_to_dict(trial.config)
    row = rows.get(trial.index)
    run = fs.join(search_dir, f"trial_{trial.index}")
    metrics, config = fs.join(run, "metrics.json"), fs.join(run, "config.json")
    if row is not None and row.get("config") == want and row.get("data_dir") == data_dir:
        # re-read from the run folder when it is there: the row then carries every figure this version reports
        return _row(trial, trial.config.train.mode, run, data_dir) if fs.isfile(metrics) else row
    if fs.isfile(metrics) and fs.isfile(config):
        saved = fs.read_json(config)
        if saved.get("config") == want and saved.get("data_dir") == data_dir:
            row = _row(trial, trial.config.train.mode, run, data_dir)
            _append(fs.join(search_dir, "trials.jsonl"), row)
            return row
    return None


def _append(path: str, row: dict) -> None:
    """One more JSONL row: the file is rewritten whole (object stores cannot append), atomically where possible."""
    old = fs.read_text(path) if fs.isfile(path) else ""
    fs.write_text(path, old + json.dumps(row, sort_keys=True) + "\n")


def _keys(mode: str, search: str, space: dict[str, dict[str, list]]) -> list[str]:
    """The dotted keys a search varies (and, for --write-config, decides) under `mode`."""
    return [k for s in dict(SEARCHES[mode])[search] for k in space[s]]


def _rank_key(row: dict) -> tuple[float, int]:
    auc = row.get("validation_auc")
    return (-(auc if auc is not None and not math.isnan(auc) else -math.inf), row["trial"])


def _fmt(v: Any, none: str = "-") -> str:
    if isinstance(v, dict) and "name" in v:
        lr = v.get("learning_rate")
        return v["name"] if lr is None else f"{v['name']}@{lr:g}"
    if isinstance(v, float):
        return f"{v:g}"
    return none if v is None else str(v)


def _short(params: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items()) or "base"


def _run_search(search: str, plan: list[Trial], search_dir: str, data: str, trials: int,
                echo: Callable[[str], None]) -> tuple[list[dict], int]:
    """Train (or reuse) every trial of one search in order; (rows, trials trained by this call)."""
    rows_done = _read_rows(fs.join(search_dir, "trials.jsonl"))
    done = {t.index: finished_row(search_dir, t, data, rows_done) for t in plan}
    trained, meter = 0, ProgressMeter(search, total=len(plan), unit="trials")  # reused trials: done, untimed
    results: list[dict] = []
    for t in plan:
        row = done[t.index]
        if row is None:
            run = fs.join(search_dir, f"trial_{t.index}")
            fs.rmtree(run)  # an unfinished or differently configured run: start afresh
            t0 = time.monotonic()
            train(t.config, data, run, verbose=0)
            trained += 1
            row = _row(t, search, run, data)
            _append(fs.join(search_dir, "trials.jsonl"), row)
            how = format_duration(time.monotonic() - t0)
        else:
            how = "reused"
        meter.advance(timed=how != "reused")
        results.append(row)
        best = min(results, key=_rank_key)
        echo(f"[{search} {t.index + 1}/{trials}] {_short(t.params)}: validation AUC {_fmt(row['validation_auc'])} "
             f"(best {_fmt(best['validation_auc'])}, trial {best['trial']}), {how}; {meter.timing()}")
    return results, trained


def tune(config: str | os.PathLike, data_dir: str | os.PathLike, mode: str, trials: int, seed: int,
         workdir: str | os.PathLike, out: str | os.PathLike | None = None, overrides: dict | None = None,
         space: str | os.PathLike | None = None, write_config: str | os.PathLike | None = None,
         command: str = "", echo: Callable[[str], None] = log.info) -> TuneResult:
    """Run (or resume) the searches of `mode`, write the markdown report to `out` and, optionally, the chosen
    config to `write_config`. Everything is checked before the first trial trains."""
    if mode not in TUNE_MODES:
        raise ConfigError(f"--mode: {mode!r} is not one of {', '.join(TUNE_MODES)}")
    base = base_config(config, overrides)
    data = fs.absolute(data_dir)
    artifacts.read_stats(data)  # a clear error now rather than after the first trial
    spc = load_space(space)
    for search, sections in SEARCHES[mode]:  # every trial list is checked before anything trains
        trial_list(base, search, spc, sections, seed, trials)
    results: dict[str, list[dict]] = {}
    best: dict[str, dict] = {}
    chosen: dict = {}
    trained = 0
    for search, sections in SEARCHES[mode]:
        # in --mode both the booster search starts from what the light search chose for the shared settings
        # (embedding optimizer and width, batch, epochs): the booster knobs are tuned where they will be used
        search_base = config_from_dict(deep_merge(config_to_dict(base), chosen)) if chosen else base
        plan = trial_list(search_base, search, spc, sections, seed, trials)
        results[search], n = _run_search(search, plan, fs.join(workdir, search), data, trials, echo)
        trained += n
        best[search] = min(results[search], key=_rank_key)
        for key in _keys(mode, search, spc):  # each search decides only the keys of its own sections
            chosen = deep_merge(chosen, _nested(key, _value_at(best[search]["config"], key)))
    result = TuneResult(mode, results, best, chosen, trained)
    if write_config is not None:
        if any(b.get("validation_auc") is None for b in best.values()):
            raise ConfigError("--write-config: no trial produced a validation AUC (is the validation slice empty "
                              "or one-class? raise train.validation_fraction)")
        result.written = write_tuned_config(config, overrides or {}, chosen, write_config,
                                            header_lines(command, best, trials))
    result.markdown = markdown(result, base, spc, config, data, overrides or {}, seed, trials, command)
    if out is not None:
        fs.write_text(out, result.markdown)
    return result


def header_lines(command: str, best: dict[str, dict], trials: int) -> list[str]:
    lines = [f"Written by `rocketctr tune` on {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}: "
             f"the input config with its base updated by a search scored on the validation slice of the train "
             f"split (the eval split was not used).", f"command: {command or '(library call)'}"]
    for search, row in best.items():
        lines.append(f"{search} search: validation {row['metric']} {_fmt(row['validation_auc'])} (trial "
                     f"{row['trial']} of {trials}; trial 0 is the input's base)")
    lines.append("The --set overrides of the search are folded into base; experiments are the input's, unchanged.")
    return lines


class _ReadableDumper(yaml.SafeDumper):
    """The configs/*.yaml look: short leaf mappings and scalar lists on one line, everything else as blocks."""

    def represent_dict(self, data):
        leaf = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(x, (dict, list))
                   for x in v)) for v in data.values())
        node = super().represent_dict(data)
        node.flow_style = leaf and len(str(data)) <= 90
        return node

    def represent_list(self, data):
        node = super().represent_list(data)
        node.flow_style = all(not isinstance(x, (dict, list)) for x in data)
        return node


_ReadableDumper.add_representer(dict, _ReadableDumper.represent_dict)
_ReadableDumper.add_representer(list, _ReadableDumper.represent_list)


def write_tuned_config(src: str | os.PathLike, overrides: dict, chosen: dict, dest: str | os.PathLike,
                       header: list[str]) -> Path:
    """The input YAML ({base, experiments}) with base <- overrides <- chosen values; checked before writing."""
    doc = yaml.safe_load(Path(src).read_text()) or {}
    new_base = deep_merge(deep_merge(doc.get("base") or {}, overrides), chosen)
    config_from_dict(new_base, f"{dest}: base")
    out = {"base": new_base, **({"experiments": doc["experiments"]} if "experiments" in doc else {})}
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.dump(out, Dumper=_ReadableDumper, sort_keys=False, width=1000)
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    load_config(path)  # what a user will do next must work
    return path


def markdown(result: TuneResult, base: RunConfig, space: dict, config: str | os.PathLike, data: str,
             overrides: dict, seed: int, trials: int, command: str) -> str:
    lines = ["# rocketctr tune", "",
             f"- data: `{data}`; config: `{config}`; overrides: `{json.dumps(overrides)}`",
             f"- seed {seed}, {trials} trials per search (trial 0 = the config's base); {result.trained} trained by "
             f"this call",
             f"- selection: best validation AUC of the searched tower on the validation slice "
             f"({base.train.validation_fraction:g} of the TRAIN split); the eval split is not used",
             f"- command: `{command or '(library call)'}`", ""]
    for search, rows in result.rows.items():
        keys = _keys(result.mode, search, space)
        lines += [f"## {search} search (validation {rows[0]['metric']})", "",
                  "| rank | trial | val AUC | val logloss | best epoch | "
                  + " | ".join(k.split(".", 1)[1] for k in keys) + " | train s | examples/s |",
                  "|" + " --- |" * (7 + len(keys))]
        for rank, row in enumerate(sorted(rows, key=_rank_key), 1):
            cells = [str(rank), f"{row['trial']}{' (base)' if row['trial'] == 0 else ''}",
                     _fmt(row["validation_auc"]), _fmt(row["validation_logloss"]), _fmt(row["best_epoch"]),
                     *[_fmt(_value_at(row["config"], k), "null") for k in keys], _fmt(row["train_seconds"]),
                     _fmt(row["examples_per_sec"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## chosen", "", "| key | value | from |", "| --- | --- | --- |"]
    for search, row in result.best.items():
        for key in _keys(result.mode, search, space):
            lines.append(f"| {key} | {_fmt(_value_at(row['config'], key), 'null')} | {search} trial {row['trial']} |")
    if result.written:
        lines += ["", f"written config: `{result.written}`"]
    return "\n".join(lines) + "\n"
