"""Typed training configuration: YAML with a `base` plus named experiments, unknown keys rejected.

Every ablation switch of Rocket Launching is a typed field here, so a misspelt or non-boolean switch is an
error at load time instead of a silently ignored flag (the failure mode of the paper's own code).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

MODES = ("rocket", "light", "booster", "kd")
HINTS = ("mse_logits", "kd", "mse_logits+kd")
LIGHT_KINDS = ("lr", "fm", "mlp")
BOOSTER_KINDS = ("mlp", "dcn", "din")
OPTIMIZERS = ("adam", "adagrad", "sgd", "ftrl")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "parameter_server")
CALIBRATIONS = ("platt", "none")
# what the two towers share (the paper's two schemes): "bottom" the embedding tables; "interval" the tables plus the
# first hidden layer (models/interval.py)
SHARINGS = ("bottom", "interval")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file, section and key."""


@dataclass(frozen=True)
class TowerConfig:
    kind: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    cross_layers: int = 2  # dcn only
    cross_low_rank: int | None = None  # dcn only
    attention_hidden: tuple[int, ...] = (64, 32)  # din only
    l2: float = 0.0  # L2 on this tower's kernels ("booster L2")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 0.001
    clipnorm: float | None = None


@dataclass(frozen=True)
class LossConfig:
    hint: str = "mse_logits"
    # Defaults chosen by the quality bench (docs/BENCHMARKS.md), not the paper: the paper's lambda 0.1 with the hint
    # flowing into the shared tables weakened the co-trained booster and recovered less of its edge.
    hint_weight: float = 0.3
    gradient_block: bool = True  # stop_gradient on the booster logit inside the hint (the paper's block)
    # does the hint's gradient reach the shared embedding tables (paper: yes); rocket mode only (kd: always)
    hint_into_shared: bool = False
    hint_clip: float | None = 5.0  # clip |booster logit| used as the hint target
    temperature: float = 2.0  # for the kd hint
    warmup_steps: int = 0  # linear ramp of hint_weight from 0 over this many steps


@dataclass(frozen=True)
class ModelConfig:
    share_embeddings: bool = True  # off: the light tower gets its own embedding tables
    sharing: str = "bottom"  # one of SHARINGS; interval: rocket mode, mlp towers with equal first widths
    light: TowerConfig = field(default_factory=lambda: TowerConfig(kind="mlp", hidden=(64,)))
    booster: TowerConfig = field(default_factory=lambda: TowerConfig(kind="mlp", hidden=(512, 256, 128)))
    loss: LossConfig = field(default_factory=LossConfig)
    embedding_l2: float = 0.0
    # set: every feature's embedding width (overrides the spec's per-feature embedding_dim, so a search or an
    # experiment can vary it without a second spec; models.embeddings.with_embedding_dim); null: the spec's
    embedding_dim: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "rocket"
    batch_size: int = 1024
    epochs: int = 1
    max_steps: int | None = None
    shuffle_buffer: int = 10000
    seed: int = 0
    embedding_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adagrad", 0.05))
    light_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    booster_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    early_stopping_patience: int = 0  # in epochs, on the light net's validation AUC; 0 = off
    # train rows held out for early stopping / selection, cut the way the spec's eval split is (models/holdout.py)
    validation_fraction: float = 0.05
    cache_max_mb: float = 2048.0  # parse the train split once and keep it in memory up to this size; 0 = stream
    per_tower_early_stopping: bool = False  # freeze the booster once its own validation AUC stops improving
    checkpoint_every_steps: int = 500
    eval_max_steps: int | None = None
    teacher_run: str | None = None  # kd mode: a finished booster (or rocket) run used as a frozen teacher
    strategy: str = "default"
    skip_corrupt_shards: bool = False
    log_every_steps: int = 100
    # served-score calibration fitted on the validation slice at the end of training (models.calibration):
    # platt = sigmoid(a * z + b) baked into the exports; none = the raw logit (the sampling correction stays)
    calibration: str = "platt"


@dataclass(frozen=True)
class RunConfig:
    name: str = "base"
    spec: str = "synthetic"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        _choice("train.mode", self.train.mode, MODES)
        _choice("train.strategy", self.train.strategy, STRATEGIES)
        _choice("train.calibration", self.train.calibration, CALIBRATIONS)
        _choice("model.loss.hint", self.model.loss.hint, HINTS)
        _choice("model.light.kind", self.model.light.kind, LIGHT_KINDS)
        _choice("model.booster.kind", self.model.booster.kind, BOOSTER_KINDS)
        _choice("model.sharing", self.model.sharing, SHARINGS)
        if self.model.sharing == "interval":
            _check_interval(self.model)
        for part in ("embedding_optimizer", "light_optimizer", "booster_optimizer"):
            _choice(f"train.{part}.name", getattr(self.train, part).name, OPTIMIZERS)
        if self.train.batch_size < 1 or self.train.epochs < 1:
            raise ConfigError(f"train: batch_size and epochs must be >= 1 ({self.train.batch_size}, "
                              f"{self.train.epochs})")
        if not 0.0 <= self.train.validation_fraction < 1.0:
            raise ConfigError(f"train.validation_fraction must be in [0, 1), got {self.train.validation_fraction}")
        if self.model.embedding_dim is not None and not 1 <= self.model.embedding_dim <= 1024:
            raise ConfigError(f"model.embedding_dim must be in 1..1024 (or null for the spec's), got "
                              f"{self.model.embedding_dim}")
        if self.model.loss.hint_weight < 0:
            raise ConfigError(f"model.loss.hint_weight must be >= 0, got {self.model.loss.hint_weight}")
        if self.train.mode == "kd" and not self.train.teacher_run:
            raise ConfigError("train.teacher_run: mode 'kd' needs a finished booster run to use as the teacher")
        return self


def _check_interval(m: ModelConfig) -> None:
    """Interval sharing is ONE first layer read by both towers: both must be MLPs whose first widths agree, over
    shared tables (the scheme is the tables plus that layer)."""
    for role, tower in (("light", m.light), ("booster", m.booster)):
        if tower.kind != "mlp":
            raise ConfigError(f"model.{role}.kind: model.sharing 'interval' shares the first hidden layer of two mlp "
                              f"towers, got {tower.kind!r}")
    if not m.light.hidden or not m.booster.hidden or m.light.hidden[0] != m.booster.hidden[0]:
        raise ConfigError(f"model.light.hidden / model.booster.hidden: model.sharing 'interval' shares the first "
                          f"hidden layer, so both need one of the same width (got {list(m.light.hidden)} and "
                          f"{list(m.booster.hidden)})")
    if not m.share_embeddings:
        raise ConfigError("model.share_embeddings: model.sharing 'interval' shares the embedding tables plus the "
                          "first hidden layer; it needs share_embeddings true")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(options)}")


def _build(cls: type, raw: Any, where: str) -> Any:
    """Recursively build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(typ: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, where)
    args = get_args(typ)
    if type(None) in args:  # Optional[...]
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
        args = get_args(typ)
    if get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: dict, where: str = "<config>") -> RunConfig:
    return _build(RunConfig, raw, where).validate()


def load_config(path: str | Path, experiment: str | None = None, overrides: dict | None = None) -> RunConfig:
    """Load `base` from a YAML file and deep-merge the named experiment and then `overrides` over it.

    File layout: {base: {...}, experiments: {name: {...partial...}}}.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    doc = yaml.safe_load(p.read_text()) or {}
    if not isinstance(doc, dict) or set(doc) - {"base", "experiments"}:
        raise ConfigError(f"{p}: top level must have only 'base' and 'experiments', got {sorted(doc)}")
    raw = dict(doc.get("base") or {})
    if experiment not in (None, "base"):
        exps = doc.get("experiments") or {}
        if experiment not in exps:
            raise ConfigError(f"{p}: no experiment {experiment!r} (have: {', '.join(sorted(exps)) or 'none'})")
        raw = _merge(raw, exps[experiment] or {})
        raw["name"] = experiment
    raw = _merge(raw, overrides or {})
    return config_from_dict(raw, f"{p}" + (f" experiment {experiment!r}" if experiment else ""))


def config_to_dict(cfg: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def parse_override(text: str) -> dict:
    """`model.loss.hint_weight=0.3` -> {"model": {"loss": {"hint_weight": 0.3}}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = yaml.safe_load(value)
    return out
