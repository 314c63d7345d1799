"""Typed training configuration: YAML with a `base` plus named experiments, unknown keys rejected.

Every ablation switch of Rocket Launching is a typed field here, so a misspelt or non-boolean switch is an
error at load time instead of a silently ignored flag (the failure mode of the paper's own code).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common import typed_yaml
from common.typed_yaml import deep_merge

# train.mode -> the towers the model builds and trains (models.rocket reads it; the allowed modes are its keys)
MODE_TOWERS = {"rocket": ("light", "booster"), "light": ("light",), "booster": ("booster",), "kd": ("light",)}
MODES = tuple(MODE_TOWERS)
HINTS = ("mse_logits", "kd", "mse_logits+kd")
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
        # the tower kinds and optimizer names are the keys of the mappings that build them; those modules need
        # TensorFlow, so they are read here, when a config is validated, not when this module is imported (the
        # command line's --help stays TensorFlow-free)
        from models.optimizers import OPTIMIZERS
        from models.towers import BOOSTER_TOWERS, LIGHT_TOWERS

        _choice("train.mode", self.train.mode, MODES)
        _choice("train.strategy", self.train.strategy, STRATEGIES)
        _choice("train.calibration", self.train.calibration, CALIBRATIONS)
        _choice("model.loss.hint", self.model.loss.hint, HINTS)
        _choice("model.light.kind", self.model.light.kind, LIGHT_TOWERS)
        _choice("model.booster.kind", self.model.booster.kind, BOOSTER_TOWERS)
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


def _choice(key: str, value: str, options) -> None:
    try:
        typed_yaml.choice(value, options)
    except typed_yaml.Problem as p:
        raise ConfigError(f"{key}: {p.message}") from None


def config_from_dict(raw: dict, where: str = "<config>") -> RunConfig:
    """The validated RunConfig of a mapping; errors name `where` (file, experiment) and the key path."""
    try:
        cfg = typed_yaml.build(RunConfig, raw)
    except typed_yaml.Problem as p:
        raise ConfigError(f"{where}: {p.dotted}: {p.message}" if p.path else f"{where}: {p.message}") from None
    return cfg.validate()


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
        raw = deep_merge(raw, exps[experiment] or {})
        raw["name"] = experiment
    raw = deep_merge(raw, overrides or {})
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
