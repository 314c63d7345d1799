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

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import feature_specs  # noqa: F401
import tensorflow as tf

from feature_specs import artifacts
from feature_specs.loader import load_spec, spec_hash
from feature_specs.schema import FeatureSpec
from models.config import ConfigError, RunConfig, config_from_dict, config_to_dict


class RunError(ValueError):
    """A run directory is missing, incomplete, or inconsistent with its data."""


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "checkpoints" / "final"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    def tower(self, name: str) -> Path:
        return self.root / "towers" / name


@dataclass(frozen=True)
class LoadedRun:
    spec: FeatureSpec
    cfg: RunConfig
    data_dir: str
    model: tf.keras.Model
    run_dir: Path | None = None


def resolve_spec(cfg: RunConfig, data_dir: str | os.PathLike) -> FeatureSpec:
    """The spec the data was preprocessed with (DIR/spec.yaml) is authoritative; a config naming a different
    spec is an error rather than a silently mismatched model."""
    copy = artifacts.spec_copy_path(data_dir)
    if not copy.exists():
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


def write_run_config(run_dir: Path, cfg: RunConfig, data_dir: str | os.PathLike, spec: FeatureSpec) -> None:
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if Path(spec.path).is_file():
        paths.spec.write_text(Path(spec.path).read_text(encoding="utf-8"), encoding="utf-8")
    doc = {"config": config_to_dict(cfg), "data_dir": str(Path(data_dir).resolve()), "spec_path": str(paths.spec),
           "spec_name": spec.name, "spec_hash": spec_hash(spec),
           "code_version": feature_specs.runtime.code_version()}
    _atomic_write(paths.config, json.dumps(doc, indent=1))


def read_run_config(run_dir: str | os.PathLike) -> tuple[RunConfig, str, FeatureSpec]:
    """(cfg, data_dir, spec) recorded by the training job."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise RunError(f"{paths.config}: not a run directory (config.json is missing)")
    doc = json.loads(paths.config.read_text())
    cfg = config_from_dict(doc["config"], str(paths.config))
    spec = load_spec(paths.spec if paths.spec.exists() else doc["spec_path"])
    return cfg, doc["data_dir"], spec


def build_for(spec: FeatureSpec, data_dir: str, cfg: RunConfig, teacher=None) -> tf.keras.Model:
    """models.rocket.build_model (it creates every variable eagerly, so restores match at once)."""
    from models.rocket import build_model  # the model package; imported late so data-only users stay light

    return build_model(spec, data_dir, cfg, teacher=teacher)


def scoring_config(cfg: RunConfig) -> RunConfig:
    """A kd student is structurally a light-only model (the teacher is a frozen outside callable that is not
    part of its checkpoint), so it is rebuilt as one: scoring a finished run never needs the teacher."""
    if cfg.train.mode != "kd":
        return cfg
    return replace(cfg, train=replace(cfg.train, mode="light", teacher_run=None))


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a finished run and restore its final weights (serving's export uses this).
    LoadedRun.cfg is the run's own config (mode kd stays kd even though the model is built light-only)."""
    root = Path(run_dir)
    cfg, data_dir, spec = read_run_config(root)
    paths = RunPaths(root)
    ckpt_path = tf.train.latest_checkpoint(str(paths.final)) or tf.train.latest_checkpoint(str(paths.checkpoints))
    if ckpt_path is None:
        raise RunError(f"{root}: no checkpoint under {paths.final} or {paths.checkpoints} (did training finish?)")
    model = build_for(spec, data_dir, scoring_config(cfg))
    tf.train.Checkpoint(model=model).restore(ckpt_path).expect_partial().assert_existing_objects_matched()
    # after the restore: a final checkpoint's Platt parameters are restored on creation; a checkpoint without
    # them (an older run, or one that never reached the end) leaves the identity (models.rocket)
    model.attach_calibration()
    return LoadedRun(spec=spec, cfg=cfg, data_dir=data_dir, model=model, run_dir=root)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, doc: dict) -> None:
    _atomic_write(path, json.dumps(doc, indent=1, sort_keys=True))


def check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    """--resume must continue the same experiment: a config that differs from the run's is an error listing
    the changed keys (a silently different resumed run would be neither run)."""
    if not RunPaths(run_dir).config.exists():
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
