"""`rocketctr tune`: seeded, resumable random search on the validation slice of the train split.

Thin over models.tune.tune: parses --set overrides, builds the exact command line for the report and the
written config's header, and quiets the training jobs' own logs so the search prints one line per trial (with
done/total and ETA; each trial's training still prints its progress lines, common/progress.py, on stderr).

  rocketctr tune --data DIR --config configs/synthetic.yaml --mode both --trials 20 --seed 0 \\
      --workdir W --out W/tune.md --write-config configs/synthetic_tuned.yaml
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from common.typed_yaml import deep_merge
from models.config import ConfigError, parse_override

TUNE_MODES = ("light", "booster", "both", "rocket", "all")  # models.tune.TUNE_MODES (not imported here: --help stays TF-free)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="preprocessing output folder (its train split is searched on)")
    p.add_argument("--config", required=True, help="training config YAML ({base, experiments}); its base is trial 0")
    p.add_argument("--mode", choices=TUNE_MODES, required=True,
                   help="which tower to search for; both = a light search (shared settings + light_optimizer) "
                        "and a booster search (booster_optimizer, dropout, l2); rocket = the co-training "
                        "settings (hint weight, hint into shared tables, shared tables) in rocket mode, scored on "
                        "the light net; all = light, booster, rocket in that order")
    p.add_argument("--trials", type=int, required=True, help="trials per search, trial 0 = the config's base")
    p.add_argument("--seed", type=int, default=0, help="seed of the trial list (default 0)")
    p.add_argument("--workdir", required=True, help="trial runs and trials.jsonl go to WORKDIR/<light|booster>/; "
                   "a rerun reuses the finished trials")
    p.add_argument("--out", help="markdown report (default WORKDIR/tune.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="config override applied to every trial (repeatable), e.g. train.max_steps=2000")
    p.add_argument("--space", help="YAML {common|light|booster: {key.path: [values]}} merged over the default space "
                   "(models/tune.py DEFAULT_SPACE); a key set to null or [] is not searched")
    p.add_argument("--write-config", help="write the input config with its base updated by the chosen values here")


def command_line(args: argparse.Namespace) -> str:
    """The command, rebuilt from the parsed arguments (the same whether called from a shell or a test)."""
    argv = ["rocketctr", "tune", "--data", args.data, "--config", args.config, "--mode", args.mode,
            "--trials", str(args.trials), "--seed", str(args.seed), "--workdir", args.workdir]
    if args.out:
        argv += ["--out", args.out]
    for text in args.overrides:
        argv += ["--set", text]
    if args.space:
        argv += ["--space", args.space]
    if args.write_config:
        argv += ["--write-config", args.write_config]
    return shlex.join(argv)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("absl", "rocketctr.train", "rocketctr.data", "rocketctr.calibration"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per trial, not each job's epoch logs
    from feature_specs import SpecError
    from feature_specs.artifacts import ArtifactError
    from models.data import CorruptShardError
    from models.run import RunError
    from models.tune import tune

    try:
        over: dict = {}
        for text in args.overrides:
            over = deep_merge(over, parse_override(text))
        out = args.out or f"{args.workdir.rstrip('/')}/tune.md"
        result = tune(args.config, args.data, args.mode, args.trials, args.seed, args.workdir, out=out,
                      overrides=over, space=args.space, write_config=args.write_config, command=command_line(args))
    except (ConfigError, SpecError, ArtifactError, CorruptShardError, RunError) as e:
        print(f"rocketctr tune: {e}", file=sys.stderr)
        return 1
    print(result.markdown, end="")
    print(f"wrote {out}" + (f" and {result.written}" if result.written else "")
          + f" ({result.trained} trials trained, the rest reused)")
    return 0
