"""Export a trained run's light net as a TF Serving model version: DIR/<version>/saved_model.pb + variables/.

Only the light path (input preprocessing + shared embeddings + light tower) is written: models.saved
tracks exactly that. Before a version becomes visible it must pass the same gates the server applies:
it loads, its warmup requests (real eval rows, in TF Serving's assets.extra format) run through all three
signatures, its scores equal the training model's calibrated light logits (Platt map and negative sampling
correction included, max abs diff < 1e-5), and for the light net no booster variable is in it. The version
is built in DIR/.tmp-<uuid> (a name TF Serving and our registry ignore) and published by
common.versions.publish_version: renamed into place on a local disk; on an object store copied with
saved_model.pb and then the `_COMPLETE` marker last. Either way a crash leaves no half version for a server
(ours or TF Serving) to pick up. DIR may be local or a URL (gs://, hdfs://, ram://).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2

import feature_specs
from common import fs, versions
from feature_specs import artifacts, derive, packed
from feature_specs.loader import spec_hash
from feature_specs.schema import FeatureSpec
from serving.registry import warm_up
from serving.signatures import ASSETS_EXTRA, METADATA_FILE, load_servable
from serving.tensors import fill_proto
from serving.warmup import write_warmup

PARITY_TOLERANCE = 1e-5
BOOSTER_WARNING = ("--tower booster exports the BOOSTER net for benchmarking only: it is NOT the model to serve "
                   "(metadata marks it for_serving=false)")
log = logging.getLogger("rocketctr.serving.export")


class ExportError(RuntimeError):
    """The export could not be published (bad version, failed gate); nothing visible was written."""


def exported_variable_names(version_dir: str | os.PathLike) -> list[str]:
    """Names of every variable saved in a SavedModel (from its object graph): what the no-booster test lists."""
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(fs.read_bytes(fs.join(version_dir, versions.SAVED_MODEL)))
    return sorted(n.variable.name for mg in sm.meta_graphs for n in mg.object_graph_def.nodes
                  if n.WhichOneof("kind") == "variable")


def read_eval_examples(data_dir: str | os.PathLike, n: int) -> list[bytes]:
    """The first n serialized examples of the eval split (real requests for warmup and the parity gate)."""
    shards = artifacts.list_shards(data_dir, "eval")
    ds = tf.data.TFRecordDataset(shards, compression_type="GZIP").take(n)
    out = [r.numpy() for r in ds]
    if not out:
        raise ExportError(f"{data_dir}: the eval split is empty; warmup requests need real rows")
    return out


def model_inputs_of(spec: FeatureSpec, examples: list[bytes]) -> dict[str, np.ndarray]:
    parsed = tf.io.parse_example(tf.constant(examples), derive.parse_spec(spec, features_only=True))
    return {k: v.numpy() for k, v in derive.to_model_inputs(spec, parsed).items()}


def warmup_requests(spec: FeatureSpec, examples: list[bytes], model_name: str = "") -> list[predict_pb2.PredictRequest]:
    """Per signature one single-row and one full-batch request (two graph shapes warmed each)."""
    x = model_inputs_of(spec, examples)
    user = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))
    batches = {
        "serving_default": lambda n: {"examples": np.asarray(examples[:n], dtype=object)},
        "predict_raw": lambda n: {k: v[:n] for k, v in x.items()},
    }
    layout = packed.packed_layout(spec)
    if layout:  # the candidate signatures exist only when the spec has item features
        batches["score_candidates"] = lambda n: {k: (v[:1] if k in user else v[:n]) for k, v in x.items()}
        batches[packed.SIGNATURE] = lambda n: packed.pack(
            layout, {k: v[:1] for k, v in x.items() if k in user}, {k: v[:n] for k, v in x.items() if k not in user})
    out = []
    for sig, make in batches.items():
        for n in sorted({1, len(examples)}):
            r = predict_pb2.PredictRequest()
            r.model_spec.name = model_name
            r.model_spec.signature_name = sig
            for k, v in make(n).items():
                fill_proto(r.inputs[k], v)
            out.append(r)
    return out


def export_run(run_dir: str | os.PathLike, model_base: str | os.PathLike, version: int | None = None,
               tower: str = "light", warmup_rows: int = 8) -> str | Path:
    """Load a finished run (models.run.load_run) and publish its `tower` as a new version folder."""
    from models.run import load_run

    loaded = load_run(run_dir)
    metrics_path = fs.join(run_dir, "metrics.json")
    run_info = {"run_dir": fs.absolute(run_dir), "data_dir": str(loaded.data_dir),
                "mode": loaded.cfg.train.mode,
                "metrics": fs.read_json(metrics_path) if fs.exists(metrics_path) else None}
    return export_model(loaded.model, loaded.spec, loaded.data_dir, model_base, version, tower, run_info,
                        warmup_rows)


def export_model(model, spec: FeatureSpec, data_dir: str | os.PathLike, model_base: str | os.PathLike,
                 version: int | None = None, tower: str = "light", run_info: dict | None = None,
                 warmup_rows: int = 8) -> str | Path:
    """Publish `tower` of a built model as model_base/<version> (common.versions.publish_version: no server
    ever sees half of it); returns the version folder (a Path when local)."""
    from models.saved import save_tower

    if tower not in ("light", "booster"):
        raise ExportError(f"--tower must be light or booster, got {tower!r}")
    if tower == "booster":
        log.warning(BOOSTER_WARNING)
    base = fs.as_str(model_base)
    fs.makedirs(base)
    version = versions.next_version(base) if version is None else version
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    final = fs.join(base, str(version))
    if fs.exists(final):
        raise ExportError(f"{final} already exists: versions are immutable, pick another --version")
    tmp = versions.staging_dir(base, uuid.uuid4().hex)
    t0 = time.perf_counter()
    try:
        save_tower(model, tower, tmp)
        examples = read_eval_examples(data_dir, warmup_rows)
        write_warmup(tmp, warmup_requests(spec, examples, fs.basename(base)))
        variables = exported_variable_names(tmp)
        if tower == "light":
            _check_no_booster(model, variables)
        parity = _check(tmp, model, spec, tower, examples)
        meta = _metadata(spec, tower, version, run_info, parity, variables, time.perf_counter() - t0,
                         model.attach_calibration().towers[tower].params())
        fs.write_text(fs.join(tmp, ASSETS_EXTRA, METADATA_FILE), json.dumps(meta, indent=1, default=str))
        if fs.exists(final):
            raise ExportError(f"{final} appeared while exporting (a concurrent export?); not overwriting it")
        versions.publish_version(tmp, base, version)
    except versions.PublishError as e:
        fs.rmtree(tmp)
        raise ExportError(str(e)) from None
    except BaseException:
        fs.rmtree(tmp)
        raise
    log.info("exported %s tower of %s as %s (parity max abs diff %.2e)", tower,
             (run_info or {}).get("run_dir", "model"), final, parity)
    return fs.native(final)


def _check(path: str, model, spec: FeatureSpec, tower: str, examples: list[bytes]) -> float:
    """Load as the server does, replay warmup, and compare every signature to the training model's calibrated
    logits (what the export must serve: a * z + b + log r of models.calibration)."""
    servable = load_servable(path, 0)
    warm_up(servable)
    x = model_inputs_of(spec, examples)
    want = model.calibrated_logits(tower, {k: tf.constant(v) for k, v in x.items()})
    want = np.asarray(want).reshape(-1)
    user = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))
    got = {"serving_default": servable.runner("serving_default").run(
               {"examples": np.asarray(examples, dtype=object)})["logit"],
           "predict_raw": servable.runner("predict_raw").run(x)["logit"]}
    # score_candidates broadcasts row 0's user/context: compare with the model on the same broadcast rows
    same_user = {k: (np.repeat(v[:1], len(examples), axis=0) if k in user else v) for k, v in x.items()}
    want_same = np.asarray(model.calibrated_logits(tower, {k: tf.constant(v) for k, v in same_user.items()}))
    diffs = {k: float(np.max(np.abs(v - want))) for k, v in got.items()}
    layout = packed.packed_layout(spec)
    if layout:
        one_user = {k: v[:1] for k, v in x.items() if k in user}
        items = {k: v for k, v in x.items() if k not in user}
        got_sc = servable.runner("score_candidates").run({**one_user, **items})["logit"]
        got_packed = servable.runner(packed.SIGNATURE).run(packed.pack(layout, one_user, items))["logit"]
        diffs["score_candidates"] = float(np.max(np.abs(got_sc - want_same.reshape(-1))))
        diffs[packed.SIGNATURE] = float(np.max(np.abs(got_packed - want_same.reshape(-1))))
        diffs[f"{packed.SIGNATURE} vs score_candidates"] = float(np.max(np.abs(got_packed - got_sc)))
    worst = max(diffs.values())
    if not worst < PARITY_TOLERANCE:
        raise ExportError(f"exported {tower} net disagrees with the training model: max abs logit diff per "
                          f"signature {diffs} (tolerance {PARITY_TOLERANCE})")
    return worst


def _calibration_method(run_info: dict | None, tower: str) -> str | None:
    """How the run fitted the map (platt / intercept / identity / none), from its metrics.json when known."""
    metrics = (run_info or {}).get("metrics") or {}
    return ((metrics.get("calibration") or {}).get(tower) or {}).get("method")


def _check_no_booster(model, variables: list[str]) -> None:
    strip = lambda n: n.split(":")[0]  # noqa: E731
    booster = {strip(v.name) for v in getattr(model, "booster_variables", [])}
    keep = {strip(v.name) for v in [*getattr(model, "shared_variables", []), *getattr(model, "light_variables", [])]}
    leaked = [n for n in variables if n.startswith("booster/") or (strip(n) in booster - keep)]
    if leaked:
        raise ExportError(f"the light export contains booster variables {leaked[:5]}; models.saved must track "
                          f"only the light path")


def _metadata(spec: FeatureSpec, tower: str, version: int, run_info: dict | None, parity: float,
              variables: list[str], seconds: float, calibration: dict) -> dict:
    sides = {s: [f.name for f in spec.by_side(s)] for s in ("user", "item", "context")}
    return {
        "format": 1, "tower": tower, "for_serving": tower == "light",
        "warning": None if tower == "light" else BOOSTER_WARNING,
        "version": version, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": feature_specs.runtime.code_version(), "export_seconds": round(seconds, 2),
        "spec": {"name": spec.name, "hash": spec_hash(spec), "path": spec.path,
                 "features": [{"name": f.name, "kind": f.kind, "side": f.side, "towers": list(f.towers)}
                              for f in spec.features],
                 "sides": sides, "label": spec.label.name,
                 "negative_sampling_rate": spec.negative_sampling_rate},
        "signatures": {"serving_default": "examples: string[N] (serialized tf.Example) -> ctr, logit, "
                                          "logit_uncalibrated [N]",
                       "predict_raw": "raw features (feature_specs.derive.serving_input_specs) -> ctr, logit, "
                                      "logit_uncalibrated [N]",
                       "score_candidates": "user+context batch 1, item batch N -> ctr, logit, logit_uncalibrated [N]",
                       packed.SIGNATURE: "score_candidates' features packed one tensor per side and dtype (layout: "
                                         "'packed') -> ctr, logit, logit_uncalibrated [N]"},
        # how score_packed's inputs are laid out (feature_specs.packed): clients pack from this alone
        "packed": packed.layout_to_dict(packed.packed_layout(spec)),
        # logit = a * logit_uncalibrated + b + log(negative_sampling_rate); ctr = sigmoid(logit)
        "calibration": {**calibration, "method": _calibration_method(run_info, tower)},
        "parity_max_abs_logit_diff": parity, "variables": len(variables),
        "run": run_info,
    }
