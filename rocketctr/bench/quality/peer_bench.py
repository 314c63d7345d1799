"""`rocketctr bench peer`: a DeepCTR reference figure (DNN, DCN) on exactly our split and rows.

Why: the quality tables report our booster-alone; a well-known implementation trained on the same rows says
whether that figure is in the right range. The rows and ids come from our own training pipeline
(rocketctr/bench/quality/peer_data.py: train minus the validation slice, the validation slice, the eval split, ids
from our input layer); DeepCTR runs in its own bench-only env (`make peer-env` -> .venv-peer,
requirements-peer.txt) through rocketctr/bench/quality/peer_deepctr.py in a subprocess, so deepctr is never imported
by, nor installed with, rocketctr. Hyper-parameters default to our config's booster (hidden sizes, dropout, L2,
its Adam learning rate), the config's batch size, epochs and patience, and the spec's embedding dims: a
like-for-like reference. Differences that remain: DeepCTR trains its embeddings with Adam (ours: the config's
embedding optimizer), feeds continuous numerics to the DNN as values (ours: value x learned vector), and
regularises embeddings with its default L2 1e-5 (--l2-embedding).

  rocketctr bench peer --data DIR --config configs/movielens.yaml --out peer.json --seeds 3
  rocketctr bench peer --data DIR --config configs/movielens.yaml --out peer.json --quality quality.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rocketctr.shipped_configs import config_path

REPO = Path(__file__).resolve().parents[3]  # the checkout (.venv-peer lives there)
PEER_SCRIPT = Path(__file__).resolve().with_name("peer_deepctr.py")
DEFAULT_PYTHON = REPO / ".venv-peer" / "bin" / "python"
CONFIG = config_path("synthetic")
KIND, VERSION = "rocketctr-peer-bench", 1
PROG = "rocketctr bench peer"


class PeerBenchError(RuntimeError):
    """The peer bench cannot run (the message names the file or option and the way out)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[-2:]))
    p.add_argument("--data", required=True, help="preprocessing output folder (shards, vocab, stats, spec.yaml)")
    p.add_argument("--config", default=str(CONFIG), help="training config: validation fraction, booster "
                   "tower, batch, epochs, patience (default configs/synthetic.yaml)")
    p.add_argument("--experiment", help="an experiment of the config to take the booster from (e.g. booster_dcn)")
    p.add_argument("--out", default="peer_bench.json", help="result JSON (a markdown table goes next to it)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per model (default 3)")
    p.add_argument("--models", default="dnn,dcn", help="comma list of dnn, dcn (default dnn,dcn)")
    p.add_argument("--python", default=str(DEFAULT_PYTHON),
                   help="the peer env's python (default .venv-peer/bin/python, built by `make peer-env`)")
    p.add_argument("--workdir", help="where the id export goes (default: <out without suffix>.work)")
    p.add_argument("--quality", help="a `rocketctr bench quality` JSON on the same data: its booster-alone and "
                   "light-alone go in the table beside the peer")
    p.add_argument("--tower", default="booster", help="the tower whose features the peer reads (default booster)")
    for flag, typ, what in (("--emb-dim", int, "one embedding dim for every table (default: the config's model.embedding_dim, else the spec's)"),
                            ("--hidden", str, "DNN sizes, comma list (default: the config's booster hidden)"),
                            ("--dropout", float, "default: the booster's dropout"),
                            ("--l2", float, "L2 on DNN kernels (default: the booster's l2)"),
                            ("--l2-embedding", float, "L2 on embeddings (default DeepCTR's 1e-5)"),
                            ("--lr", float, "Adam learning rate (default: the booster optimizer's)"),
                            ("--batch-size", int, "default: train.batch_size"),
                            ("--epochs", int, "maximum epochs (default: train.epochs)"),
                            ("--patience", int, "early stopping patience on the validation AUC (default: "
                                                "train.early_stopping_patience)"),
                            ("--threads", int, "TensorFlow threads in the peer process (default: TF's)")):
        p.add_argument(flag, type=typ, help=what)
    p.add_argument("--linear", action="store_true", help="add DeepCTR's linear (wide) part to both models")
    return p


def check_peer_python(python: str | os.PathLike) -> Path:
    """The peer env's python, or an error naming `make peer-env` (the env is optional and built separately)."""
    p = Path(python)
    if not p.is_file() or not os.access(p, os.X_OK):
        raise PeerBenchError(f"the peer env's python {p} is missing: run `make peer-env` (a bench-only env with "
                             f"deepctr, requirements-peer.txt; never part of the main env) or pass --python")
    return p


def config_defaults(cfg, spec_name: str) -> dict:
    """The peer's hyper-parameters matching our booster run of `cfg` (a RunConfig)."""
    b, t = cfg.model.booster, cfg.train
    return {"hidden": list(b.hidden), "dropout": b.dropout, "l2": b.l2, "lr": t.booster_optimizer.learning_rate,
            "batch_size": t.batch_size, "epochs": t.epochs, "patience": t.early_stopping_patience,
            "cross_layers": b.cross_layers, "emb_dim": cfg.model.embedding_dim, "from": f"config {cfg.name} (booster {b.kind}), spec {spec_name}"}


def peer_command(python: Path, npz: Path, out: Path, args: argparse.Namespace) -> list[str]:
    cmd = [str(python), str(PEER_SCRIPT), "--data", str(npz), "--out", str(out), "--models", args.models,
           "--seeds", str(args.seeds), "--tower", args.tower]
    for flag in ("emb_dim", "hidden", "dropout", "l2", "l2_embedding", "lr", "batch_size", "epochs", "patience",
                 "threads"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if args.linear:
        cmd.append("--linear")
    return cmd


def run_peer(cmd: list[str], log: Path, echo=print) -> None:
    """Run the peer script, echoing its progress lines; stderr (TensorFlow's noise) goes to `log`, and its tail
    into the error when the script fails."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the peer must not see our packages
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(REPO))
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        hint = " (the peer env lacks deepctr/tensorflow: run `make peer-env`)" if code == 3 else ""
        raise PeerBenchError(f"the peer script exited with code {code}{hint}; its stderr ({log}) ends with:\n{tail}")


def quality_reference(path: str | os.PathLike, data_dir: Path) -> dict:
    """Booster-alone and light-alone eval AUC / logloss (mean, std) from a quality bench JSON on the same data."""
    p = Path(path)
    if not p.is_file():
        raise PeerBenchError(f"--quality: {p} not found (a `rocketctr bench quality` JSON)")
    doc = json.loads(p.read_text())
    if doc.get("kind") != "rocketctr-quality-bench":
        raise PeerBenchError(f"--quality: {p} is not a quality bench JSON (kind {doc.get('kind')!r})")
    if Path(doc.get("data_dir", "")).resolve() != data_dir.resolve():
        raise PeerBenchError(f"--quality: {p} was measured on {doc.get('data_dir')}, not on {data_dir.resolve()}: "
                             f"the figures would not be on the same rows")
    gap = doc["summary"]["gap"]
    seeds = sorted({r["seed"] for r in doc.get("runs", [])})
    return {"path": str(p), "seeds": seeds,
            **{who: {m: gap[m][who] for m in ("auc", "logloss") if m in gap} for who in ("booster_alone",
                                                                                         "light_alone")}}


def _f(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def table(result: dict, reference: dict | None) -> list[str]:
    lines = ["| model | implementation | seeds | eval AUC | eval logloss | validation AUC | best epoch | ex/s | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    if reference:
        for who, label in (("booster_alone", "ours: booster alone"), ("light_alone", "ours: light alone")):
            auc, ll = reference[who].get("auc", {}), reference[who].get("logloss", {})
            std = f" +- {_f(auc.get('std'))}" if auc.get("std") is not None else ""
            lines.append(f"| {label} | rocketctr (quality bench) | {len(reference['seeds'])} | "
                         f"{_f(auc.get('mean'))}{std} | {_f(ll.get('mean'))} | - | - | - | - |")
    for s in result["summary"]:
        std = f" +- {_f(s['eval_auc_std'])}" if s.get("eval_auc_std") is not None else ""
        lines.append(f"| {s['model']} | {s['class']} | {s['n_seeds']} | {_f(s['eval_auc'])}{std} | "
                     f"{_f(s['eval_logloss'])} | {_f(s['validation_auc'])} | "
                     f"{','.join(map(str, s['best_epoch']))} | {_f(s['examples_per_sec'], '.0f')} | "
                     f"{_f(s['seconds'], '.0f')} |")
    return lines


def markdown(doc: dict) -> str:
    r, e = doc["peer"], doc["export"]
    lines = ["# DeepCTR peer reference", "",
             f"- data: `{doc['data_dir']}` (spec {e['spec_name']}): {e['rows']['train']:,} train rows (minus the "
             f"validation slice), {e['rows']['validation']:,} validation rows ({json.dumps(e['holdout'])}), "
             f"{e['rows']['eval']:,} eval rows",
             f"- config: `{doc['config']}`{' experiment ' + doc['experiment'] if doc.get('experiment') else ''}; "
             f"peer settings: `{json.dumps(r['settings'])}`",
             f"- {r['library']}, tensorflow {r['tensorflow']}, tf-keras {r['tf_keras']}; {len(r['features'])} "
             f"features; written {doc['written']}", "", *table(r, doc.get("quality_reference")), "",
             "Eval AUC: exact weighted rank AUC on the eval split (ours: the eval job's AUC), the best validation "
             "epoch's weights; ex/s: training rows per second of `fit` on this shared machine (indicative)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from feature_specs import artifacts
    from models.config import ConfigError, load_config
    from models.run import resolve_spec
    from rocketctr.bench.quality import peer_data

    args = _parser().parse_args(argv)
    if args.seeds < 1:
        print(f"{PROG}: --seeds must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix != ".json":
        print(f"{PROG}: --out {out}: expected a .json path (the markdown table goes next to it as .md)",
              file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else out.with_suffix(".work")
    data = Path(args.data)
    try:
        python = check_peer_python(args.python)
        cfg = load_config(args.config, args.experiment)
        spec = resolve_spec(cfg, data)
        reference = quality_reference(args.quality, data) if args.quality else None
        names = tuple(f.name for f in spec.features if args.tower == "all" or args.tower in f.towers)
        if not names:
            raise PeerBenchError(f"--tower {args.tower}: no feature of spec {spec.name} is read by that tower")
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        export = peer_data.export_peer_data(data, workdir / "peer_data.npz", cfg.train.validation_fraction,
                                            spec=spec, names=names, defaults=config_defaults(cfg, spec.name))
        print(f"peer data: {export['rows']} rows ({json.dumps(export['holdout'])}) in {export['npz']} "
              f"({time.monotonic() - t0:.1f} s)")
        result_file = workdir / "peer_result.json"
        result_file.unlink(missing_ok=True)
        run_peer(peer_command(python, Path(export["npz"]), result_file, args), workdir / "peer_stderr.log")
        result = json.loads(result_file.read_text())
    except (PeerBenchError, ConfigError, artifacts.ArtifactError, peer_data.PeerDataError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    doc = {"kind": KIND, "version": VERSION, "data_dir": str(data.resolve()), "config": args.config,
           "experiment": args.experiment, "validation_fraction": cfg.train.validation_fraction,
           "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "export": {k: export[k] for k in ("spec_name", "spec_hash", "rows", "positives", "holdout", "npz",
                                              "defaults")},
           "quality_reference": reference, "peer": result, "summary": result["summary"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    md = out.with_suffix(".md")
    md.write_text(markdown(doc))
    print(md.read_text())
    print(f"wrote {out} and {md}")
    return 0
