"""DeepCTR peer reference: train DeepCTR's DNN and DCN on a rocketctr peer export and report eval AUC / logloss.

Run by the bench-only env's python (`make peer-env` -> .venv-peer), never by the main env: this file imports
only numpy, tensorflow (tf-keras), deepctr and the standard library, never a rocketctr package (common/metrics.py is
loaded by file path), so deepctr never becomes a dependency of ours. `rocketctr bench peer` writes the export
(rocketctr/bench/quality/peer_data.py) and runs this script in a subprocess.

Models (DeepCTR 0.9.4 has no class named DNN):
- dnn: deepctr.models.WDL with an empty linear part: DeepCTR's embeddings -> DNN(hidden) -> Dense(1, no bias) ->
  PredictionLayer (bias + sigmoid), i.e. exactly a plain deep net; `--linear` restores the wide part.
- dcn: deepctr.models.DCN (cross network + DNN, cross_parameterization "vector"), linear part off likewise.

Training: Adam, binary cross-entropy, one epoch at a time; after each epoch the validation slice's AUC decides
(early stopping after `--patience` epochs without improvement, 0 = run every epoch) and the best epoch's weights
are restored before the eval split is scored once. AUC (exact, weighted, ties counted 1/2) and logloss come from
this checkout's common/metrics.py, loaded by file path (numpy only), so they are the definitions our eval reports.

  .venv-peer/bin/python rocketctr/bench/quality/peer_deepctr.py --data PEER.npz --out peer.json --models dnn,dcn --seeds 3
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # DeepCTR is written for Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

KIND, VERSION = "rocketctr-peer-result", 1
MODELS = ("dnn", "dcn")
PARTS = ("train", "validation", "eval")
# What the issue asking for this figure used; the bench passes our config's values instead (like-for-like).
FALLBACK = {"hidden": [256, 128, 64], "dropout": 0.0, "l2": 0.0, "lr": 1e-3, "batch_size": 256, "epochs": 10,
            "patience": 2, "cross_layers": 2}
MISSING_ENV = 3  # exit code: deepctr / tensorflow not importable here (the bench names `make peer-env`)


class PeerError(ValueError):
    """Bad input to the peer run (the message names the file or flag and what was expected)."""


# ------------------------------------------------------------------------------------------------ metrics
def _load_common_metrics() -> types.ModuleType:
    """This checkout's common/metrics.py (numpy only), loaded by path: the peer's AUC and logloss are the very
    definitions our training and eval report, while our packages stay off this env's import path (no package
    __init__ of ours runs here)."""
    path = Path(__file__).resolve().parents[3] / "common" / "metrics.py"
    spec = importlib.util.spec_from_file_location("rocketctr_common_metrics", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


metrics = _load_common_metrics()


# ------------------------------------------------------------------------------------------------ data
def load_export(npz: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The export's JSON (same stem) and arrays; checks the layout this script reads."""
    meta_file = npz.with_suffix(".json")
    if not npz.is_file():
        raise PeerError(f"{npz}: peer export not found (write it with rocketctr/bench/quality/peer_data.py)")
    if not meta_file.is_file():
        raise PeerError(f"{meta_file}: the export's JSON description is missing")
    meta = json.loads(meta_file.read_text())
    if meta.get("kind") != "rocketctr-peer-data" or meta.get("version") != 1:
        raise PeerError(f"{meta_file}: expected kind 'rocketctr-peer-data' version 1, got {meta.get('kind')!r} "
                        f"version {meta.get('version')!r}")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def select_features(meta: dict, tower: str) -> list[dict]:
    feats = [f for f in meta["features"] if tower == "all" or tower in f["towers"]]
    if not feats:
        raise PeerError(f"--tower {tower}: no feature of the export is read by that tower")
    return feats


def model_inputs(arrays: dict[str, np.ndarray], part: str, features: list[dict]) -> dict[str, np.ndarray]:
    """Keras input dict of one part: [N, 1] columns, [N, L] sequences plus their [N, 1] lengths."""
    out = {}
    for f in features:
        x = arrays[f"{part}/x/{f['name']}"]
        if f["kind"] == "sequence":
            out[f["name"]] = x.astype(np.int32)
            out[length_name(f)] = arrays[f"{part}/len/{f['name']}"].astype(np.int32).reshape(-1, 1)
        elif f["kind"] == "numeric":
            out[f["name"]] = x.astype(np.float32).reshape(-1, 1)
        else:
            out[f["name"]] = x.astype(np.int32).reshape(-1, 1)
    return out


def length_name(f: dict) -> str:
    return f"{f['name']}__length"


# ------------------------------------------------------------------------------------------------ models
def feature_columns(features: list[dict], emb_dim: int | None, seed: int) -> list:
    """DeepCTR columns: SparseFeat / DenseFeat / VarLenSparseFeat (masked by length), tables shared by name.

    DeepCTR's own initializer (normal, stddev 1e-4) with a seed per run, so seeds differ in their tables too.
    """
    import tensorflow as tf
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat

    dims: dict[str, int] = {}
    cols = []
    for i, f in enumerate(features):
        if f["kind"] == "numeric":
            cols.append(DenseFeat(f["name"], 1))
            continue
        dim = emb_dim or int(f["embedding_dim"])
        table = f["embedding_name"]
        if dims.setdefault(table, dim) != dim:
            raise PeerError(f"feature {f['name']}: table {table!r} has two embedding dims ({dims[table]}, {dim})")
        init = tf.keras.initializers.RandomNormal(0.0, 1e-4, seed=seed * 1000 + i)
        sparse = SparseFeat(f["name"], vocabulary_size=int(f["vocab_size"]), embedding_dim=dim,
                            embedding_name=table, embeddings_initializer=init)
        if f["kind"] == "sequence":
            cols.append(VarLenSparseFeat(sparse, maxlen=int(f["maxlen"]), combiner=f["combiner"],
                                         length_name=length_name(f)))
        else:
            cols.append(sparse)
    return cols


def build_model(name: str, features: list[dict], settings: dict, seed: int):
    """(DeepCTR model, the class used) for `name` in MODELS."""
    from deepctr.models import DCN, WDL

    cols = feature_columns(features, settings["emb_dim"], seed)
    linear = cols if settings["linear"] else []
    common = {"dnn_hidden_units": tuple(settings["hidden"]), "l2_reg_embedding": settings["l2_embedding"],
              "l2_reg_dnn": settings["l2"], "dnn_dropout": settings["dropout"], "seed": seed, "task": "binary"}
    if name == "dnn":
        what = "deepctr.models.WDL" + ("" if settings["linear"] else " (linear part off: a plain DNN)")
        return WDL(linear, cols, **common), what
    if name == "dcn":
        what = "deepctr.models.DCN" + ("" if settings["linear"] else " (linear part off)")
        return DCN(linear, cols, cross_num=settings["cross_layers"], cross_parameterization="vector",
                   l2_reg_cross=settings["l2_embedding"], **common), what
    raise PeerError(f"--models: unknown model {name!r} (known: {', '.join(MODELS)})")


def train_one(name: str, seed: int, features: list[dict], arrays: dict[str, np.ndarray], settings: dict,
              echo=print) -> dict:
    """Fit one model with one seed (early stopping on the validation AUC, best weights restored); score eval."""
    import tensorflow as tf

    t_start = time.monotonic()
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    model, what = build_model(name, features, settings, seed)
    model.compile(optimizer=tf.keras.optimizers.Adam(settings["lr"]), loss="binary_crossentropy")
    x = {p: model_inputs(arrays, p, features) for p in PARTS}
    y = {p: arrays[f"{p}/label"].astype(np.float32) for p in PARTS}
    w = {p: arrays[f"{p}/weight"].astype(np.float32) for p in PARTS}
    has_validation = y["validation"].size > 0
    best_auc, best_weights, best_epoch, wait = -np.inf, None, 0, 0
    fit_seconds, history = 0.0, []
    for epoch in range(1, settings["epochs"] + 1):
        t0 = time.monotonic()
        h = model.fit(x["train"], y["train"], sample_weight=w["train"], batch_size=settings["batch_size"], epochs=1,
                      shuffle=True, verbose=0)
        fit_seconds += time.monotonic() - t0
        row = {"epoch": epoch, "train_loss": float(h.history["loss"][-1]), "fit_seconds": round(fit_seconds, 2)}
        if has_validation:
            p = model.predict(x["validation"], batch_size=8192, verbose=0)
            auc = metrics.auc(p, y["validation"], w["validation"])
            row["validation_auc"] = auc
            if auc is not None and auc > best_auc:
                best_auc, best_weights, best_epoch, wait = auc, model.get_weights(), epoch, 0
            else:
                wait += 1
        else:
            best_epoch = epoch
        history.append(row)
        echo(f"  {name} seed {seed} epoch {epoch}: train loss {row['train_loss']:.4f}"
             + (f", validation AUC {_f(row.get('validation_auc'))}" if has_validation else ""))
        if has_validation and settings["patience"] > 0 and wait >= settings["patience"]:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    p_eval = model.predict(x["eval"], batch_size=8192, verbose=0)
    epochs_run = len(history)
    return {
        "model": name, "class": what, "seed": seed,
        "eval_auc": metrics.auc(p_eval, y["eval"], w["eval"]),
        "eval_logloss": metrics.logloss(p_eval, y["eval"], w["eval"]),
        "validation_auc": best_auc if np.isfinite(best_auc) else None, "best_epoch": best_epoch,
        "epochs_run": epochs_run, "train_rows": int(y["train"].size),
        "examples_per_sec": round(y["train"].size * epochs_run / fit_seconds, 1) if fit_seconds > 0 else None,
        "fit_seconds": round(fit_seconds, 2), "seconds": round(time.monotonic() - t_start, 2),
        "params": int(model.count_params()), "history": history}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def summarize(runs: list[dict]) -> list[dict]:
    """Per model: mean over seeds (and sample std of eval AUC), with every seed's run kept."""
    out = []
    for name in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == name]

        def mean(key: str) -> float | None:
            vals = [r[key] for r in rs if r[key] is not None]
            return float(np.mean(vals)) if vals else None

        aucs = [r["eval_auc"] for r in rs if r["eval_auc"] is not None]
        out.append({"model": name, "class": rs[0]["class"], "n_seeds": len(rs), "eval_auc": mean("eval_auc"),
                    "eval_auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
                    "eval_logloss": mean("eval_logloss"), "validation_auc": mean("validation_auc"),
                    "best_epoch": [r["best_epoch"] for r in rs], "examples_per_sec": mean("examples_per_sec"),
                    "seconds": float(sum(r["seconds"] for r in rs)), "seeds": [r["seed"] for r in rs]})
    return out


# ------------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peer_deepctr.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Hyper-parameters default to the export's `defaults` (our config's booster, "
                                       "written by `rocketctr bench peer`), else to DNN 256-128-64, Adam 1e-3, "
                                       "batch 256; embedding dims default to the spec's per table.")
    p.add_argument("--data", required=True, help="peer export .npz (its .json description next to it)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--models", default="dnn,dcn", help=f"comma list of {', '.join(MODELS)} (default dnn,dcn)")
    p.add_argument("--seeds", type=int, default=1, help="seeds seed-base .. seed-base+N-1 (default 1)")
    p.add_argument("--seed-base", type=int, default=0)
    p.add_argument("--tower", default="booster", help="train on the features this tower reads (light, booster, "
                   "all; default booster)")
    p.add_argument("--emb-dim", type=int, help="one embedding dim for every table (default: the config's model.embedding_dim, else the spec's)")
    p.add_argument("--hidden", help="DNN layer sizes, comma list (e.g. 256,128,64)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--l2", type=float, help="L2 on the DNN kernels (DeepCTR l2_reg_dnn)")
    p.add_argument("--l2-embedding", type=float, default=1e-5,
                   help="L2 on embeddings (and DCN's cross weights); DeepCTR's default 1e-5")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--patience", type=int, help="epochs without a better validation AUC before stopping (0: none)")
    p.add_argument("--cross-layers", type=int, help="DCN cross layers")
    p.add_argument("--linear", action="store_true", help="add DeepCTR's linear (wide) logit to both models")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra/inter-op threads (0: TF's default)")
    return p


def resolve_settings(args: argparse.Namespace, defaults: dict) -> dict:
    """Flags over the export's defaults over FALLBACK; validated."""
    def pick(key: str, flag):
        return flag if flag is not None else defaults.get(key, FALLBACK[key])

    hidden = [int(h) for h in args.hidden.split(",") if h.strip()] if args.hidden else list(pick("hidden", None))
    s = {"hidden": hidden, "dropout": float(pick("dropout", args.dropout)), "l2": float(pick("l2", args.l2)),
         "lr": float(pick("lr", args.lr)), "batch_size": int(pick("batch_size", args.batch_size)),
         "epochs": int(pick("epochs", args.epochs)), "patience": int(pick("patience", args.patience)),
         "cross_layers": int(pick("cross_layers", args.cross_layers)), "emb_dim": args.emb_dim if args.emb_dim is not None else defaults.get("emb_dim"),
         "l2_embedding": float(args.l2_embedding), "linear": bool(args.linear), "tower": args.tower}
    if not hidden or any(h < 1 for h in hidden):
        raise PeerError(f"--hidden: expected positive layer sizes, got {hidden}")
    if s["batch_size"] < 1 or s["epochs"] < 1 or s["patience"] < 0 or s["lr"] <= 0:
        raise PeerError(f"expected batch-size >= 1, epochs >= 1, patience >= 0, lr > 0; got {s}")
    if not 0.0 <= s["dropout"] < 1.0:
        raise PeerError(f"--dropout: expected a value in [0, 1), got {s['dropout']}")
    return s


def _quiet_version_check() -> None:
    """deepctr's __init__ asks PyPI for a newer release in a thread on every import: a bench makes no such
    network call (and the failure message would clutter the output). Its `requests.get` answers "not ok"."""
    import requests

    requests.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        print(f"peer_deepctr: --models: unknown {unknown or 'empty list'} (known: {', '.join(MODELS)})",
              file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("peer_deepctr: --seeds must be >= 1", file=sys.stderr)
        return 2
    try:
        if importlib.util.find_spec("deepctr") is None:  # before touching anything in this process
            raise ImportError("No module named 'deepctr'")
        _quiet_version_check()
        import tensorflow as tf
        import deepctr
    except ImportError as e:
        print(f"peer_deepctr: {e} in {sys.executable}: run this script with the peer env's python "
              f"(`make peer-env` builds .venv-peer with tensorflow, tf-keras and deepctr)", file=sys.stderr)
        return MISSING_ENV
    keras_module = tf.keras.layers.Dense.__module__
    if not keras_module.startswith("tf_keras"):
        print(f"peer_deepctr: tf.keras resolves to {keras_module} (Keras 3); DeepCTR needs tf-keras (Keras 2) with "
              f"TF_USE_LEGACY_KERAS=1", file=sys.stderr)
        return MISSING_ENV
    tf_keras_version = importlib.metadata.version("tf-keras")
    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    try:
        npz = Path(args.data)
        meta, arrays = load_export(npz)
        settings = resolve_settings(args, meta.get("defaults") or {})
        features = select_features(meta, args.tower)
    except (PeerError, OSError, KeyError, ValueError) as e:
        print(f"peer_deepctr: {e}", file=sys.stderr)
        return 2
    rows = {p: int(arrays[f"{p}/label"].size) for p in PARTS}
    print(f"peer_deepctr: deepctr {deepctr.__version__}, tensorflow {tf.__version__}, tf-keras "
          f"{tf_keras_version}; rows {rows}; {len(features)} features ({args.tower} tower); settings "
          f"{json.dumps(settings)}", flush=True)
    runs = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for seed in range(args.seed_base, args.seed_base + args.seeds):
        for name in models:
            r = train_one(name, seed, features, arrays, settings, echo=lambda s: print(s, flush=True))
            runs.append(r)
            print(f"{name} seed {seed}: eval AUC {_f(r['eval_auc'])}, logloss {_f(r['eval_logloss'])}, validation "
                  f"AUC {_f(r['validation_auc'])} (best epoch {r['best_epoch']} of {r['epochs_run']}), "
                  f"{r['examples_per_sec']} ex/s, {r['seconds']:.0f} s", flush=True)
            doc = {"kind": KIND, "version": VERSION, "library": f"deepctr {deepctr.__version__}",
                   "tensorflow": tf.__version__, "tf_keras": tf_keras_version, "python": platform.python_version(),
                   "data": str(npz.resolve()), "spec_name": meta.get("spec_name"), "holdout": meta.get("holdout"),
                   "rows": rows, "features": [f["name"] for f in features], "settings": settings,
                   "cpus": os.cpu_count(), "wall_seconds": round(time.monotonic() - started, 1),
                   "summary": summarize(runs), "runs": runs}
            out.write_text(json.dumps(doc, indent=1))  # after every run: nothing is lost on a crash
    return 0


if __name__ == "__main__":
    sys.exit(main())
