"""`rocketctr train`: train light / booster / rocket / kd from a preprocessing output folder.

Thin over models.train.train: resolves the config (file + experiment + --mode/--teacher/--set overrides;
on --resume without --config, the run's own config.json), then trains into --out.
"""

from __future__ import annotations

import argparse
import logging
import sys

from common import fs
from common.typed_yaml import deep_merge
from models.config import MODES, ConfigError, RunConfig, config_from_dict, load_config, parse_override


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="preprocessing output folder (train-*/eval-* shards, vocab/, stats.json)")
    p.add_argument("--config", help="training config YAML ({base, experiments}); optional with --resume")
    p.add_argument("--experiment", help="named experiment inside --config (default: base)")
    p.add_argument("--out", required=True, help="run directory to write (checkpoints, tb/, metrics.json, towers/)")
    p.add_argument("--mode", choices=MODES, help="override train.mode")
    p.add_argument("--teacher", help="kd mode: a finished booster/rocket RUN_DIR (sets train.teacher_run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any config field, e.g. --set model.loss.hint_weight=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--quiet", action="store_true",
                   help="no terminal progress bar: a progress line every --progress-seconds (default 10 s) instead")


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Config file (or the run's config.json on --resume) + experiment + CLI overrides, validated."""
    over: dict = {}
    for text in args.overrides:
        over = deep_merge(over, parse_override(text))
    if args.mode:
        over = deep_merge(over, {"train": {"mode": args.mode}})
    if args.teacher:
        over = deep_merge(over, {"train": {"teacher_run": fs.absolute(args.teacher)}})
    if args.config:
        return load_config(args.config, args.experiment, over)
    if args.resume and fs.exists(fs.join(args.out, "config.json")):
        from models.run import read_run_config

        cfg, _, _ = read_run_config(args.out)
        from models.config import config_to_dict

        return config_from_dict(deep_merge(config_to_dict(cfg), over), f"{args.out}/config.json")
    raise ConfigError("--config is required (it may be left out only with --resume of an existing run)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # TF's per-call INFO chatter would bury the job's log
    from feature_specs import SpecError
    from feature_specs.artifacts import ArtifactError
    from models.data import CorruptShardError
    from models.run import RunError

    try:
        cfg = resolve_config(args)
        from models.train import train

        run_dir = train(cfg, args.data, args.out, resume=args.resume, verbose=0 if args.quiet else 1)
    except (ConfigError, SpecError, ArtifactError, CorruptShardError, RunError) as e:
        print(f"rocketctr train: {e}", file=sys.stderr)
        return 1
    metrics = fs.join(run_dir, "metrics.json")
    if fs.exists(metrics):
        print(fs.read_text(metrics))
    print(f"run written to {run_dir}")
    return 0
