"""A run directory: what a training job leaves behind, and how to get the trained model back from it.

RUN_DIR/
  config.json      resolved RunConfig + data_dir + spec path/hash (enough to rebuild the model)
  spec.yaml        a copy of the spec the data was preprocessed with
  metrics.json     final eval-split metrics per tower, steps, wall time, examples/s
  checkpoints/     periodic training checkpoints (weights, optimizer slots, progress) for --resume
  checkpoints/final/  the selected final weights (what load_run restores)
  tb/              TensorBoard logs (train/, validation/, eval/)
  towers/light/, towers/booster/   SavedModels (models.saved.save_tower) for offline eval
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import feature_specs
import tensorflow as tf

from common import fs
from feature_specs import artifacts
from feature_specs.loader import load_spec, resolved_text, spec_hash
from feature_specs.schema import FeatureSpec
from models.config import ConfigError, RunConfig, config_from_dict, config_to_dict


class RunError(ValueError):
    """A run directory is missing, incomplete, or inconsistent with its data."""


@dataclass(frozen=True)
class RunPaths:
    """The run's files as `str` paths (local or a URL: common.fs)."""

    root: str

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", fs.as_str(root))

    @property
    def config(self) -> str:
        return fs.join(self.root, "config.json")

    @property
    def metrics(self) -> str:
        return fs.join(self.root, "metrics.json")

    @property
    def spec(self) -> str:
        return fs.join(self.root, "spec.yaml")

    @property
    def checkpoints(self) -> str:
        return fs.join(self.root, "checkpoints")

    @property
    def final(self) -> str:
        return fs.join(self.root, "checkpoints", "final")

    @property
    def tb(self) -> str:
        return fs.join(self.root, "tb")

    def tower(self, name: str) -> str:
        return fs.join(self.root, "towers", name)


@dataclass(frozen=True)
class LoadedRun:
    spec: FeatureSpec
    cfg: RunConfig
    data_dir: str
    model: tf.keras.Model
    run_dir: str | Path | None = None  # a Path for a local run (common.fs.native)


def resolve_spec(cfg: RunConfig, data_dir: str | os.PathLike) -> FeatureSpec:
    """The spec the data was preprocessed with (DIR/spec.yaml) is authoritative; a config naming a different
    spec is an error rather than a silently mismatched model."""
    copy = artifacts.spec_copy_path(data_dir)
    if not fs.exists(copy):
        return load_spec(cfg.spec)
    spec = load_spec(copy)
    try:
        wanted = load_spec(cfg.spec)
    except feature_specs.SpecError:
        return spec  # the config names a spec that is not shipped here: trust the data's copy
    if spec_hash(wanted) != spec_hash(spec):
        raise ConfigError(f"spec: the config asks for {cfg.spec!r} (hash {spec_hash(wanted)}) but {data_dir} was "
                          f"preprocessed with {copy} (hash {spec_hash(spec)}); set spec to match the data")
    return spec


def write_run_config(run_dir: str | os.PathLike, cfg: RunConfig, data_dir: str | os.PathLike,
                     spec: FeatureSpec) -> None:
    paths = RunPaths(run_dir)
    fs.makedirs(paths.root)
    if spec.path and fs.isfile(spec.path):  # resolved (no `extends`), so the copy reads anywhere on its own
        fs.write_text(paths.spec, resolved_text(spec.path) if fs.is_local(spec.path) else fs.read_text(spec.path))
    doc = {"config": config_to_dict(cfg), "data_dir": fs.absolute(data_dir), "spec_path": paths.spec,
           "spec_name": spec.name, "spec_hash": spec_hash(spec),
           "code_version": feature_specs.runtime.code_version()}
    fs.write_json(paths.config, doc)


def read_run_config(run_dir: str | os.PathLike) -> tuple[RunConfig, str, FeatureSpec]:
    """(cfg, data_dir, spec) recorded by the training job."""
    paths = RunPaths(run_dir)
    if not fs.exists(paths.config):
        raise RunError(f"{paths.config}: not a run directory (config.json is missing)")
    doc = fs.read_json(paths.config)
    cfg = config_from_dict(doc["config"], paths.config)
    spec = load_spec(paths.spec if fs.exists(paths.spec) else doc["spec_path"])
    return cfg, doc["data_dir"], spec


def scoring_config(cfg: RunConfig) -> RunConfig:
    """A kd student is structurally a light-only model (the teacher is a frozen outside callable that is not
    part of its checkpoint), so it is rebuilt as one: scoring a finished run never needs the teacher."""
    if cfg.train.mode != "kd":
        return cfg
    return replace(cfg, train=replace(cfg.train, mode="light", teacher_run=None))


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a finished run and restore its final weights (serving's export uses this).
    LoadedRun.cfg is the run's own config (mode kd stays kd even though the model is built light-only)."""
    from models.rocket import build_model  # imported late: readers of run configs need not load the model code

    paths = RunPaths(run_dir)
    cfg, data_dir, spec = read_run_config(paths.root)
    ckpt_path = tf.train.latest_checkpoint(paths.final) or tf.train.latest_checkpoint(paths.checkpoints)
    if ckpt_path is None:
        raise RunError(f"{paths.root}: no checkpoint under {paths.final} or {paths.checkpoints} (did training finish?)")
    model = build_model(spec, data_dir, scoring_config(cfg))  # every variable is created eagerly: restores match
    tf.train.Checkpoint(model=model).restore(ckpt_path).expect_partial().assert_existing_objects_matched()
    # after the restore: a final checkpoint's Platt parameters are restored on creation; a checkpoint without
    # them (an older run, or one that never reached the end) leaves the identity (models.rocket)
    model.attach_calibration()
    return LoadedRun(spec=spec, cfg=cfg, data_dir=data_dir, model=model, run_dir=fs.native(paths.root))


def write_json(path: str | os.PathLike, doc: dict) -> None:
    """metrics.json and friends: written once, atomically where the store allows (common.fs)."""
    fs.write_json(path, doc, sort_keys=True)


def check_resume_config(run_dir: str | os.PathLike, cfg: RunConfig) -> None:
    """--resume must continue the same experiment: a config that differs from the run's is an error listing
    the changed keys (a silently different resumed run would be neither run)."""
    if not fs.exists(RunPaths(run_dir).config):
        return
    saved, _, _ = read_run_config(run_dir)
    if config_to_dict(saved) != config_to_dict(cfg):
        raise ConfigError(f"--resume: the config differs from {RunPaths(run_dir).config}: "
                          f"{_diff(config_to_dict(saved), config_to_dict(cfg))}")


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _diff(va, vb, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return "; ".join(out)
