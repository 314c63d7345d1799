"""The rows our training sees, as integer-id arrays a peer library (DeepCTR, rocketctr/bench/quality/peer_deepctr.py)
can train on: the export half of `rocketctr bench peer`.

Why: a reference figure is only comparable when the peer trains on exactly our train rows minus our validation
slice, selects on exactly our validation slice and is scored on exactly our eval split, with our vocabularies.
So rows come from models.data.make_dataset with the training job's own holdout rule, and ids come from the
model's own input layer (models.inputs.FeatureInputs.encode), never from a re-implementation of the lookups.

Output: one `.npz` and a JSON next to it (same stem) describing it. Arrays, per part in PARTS:
- `<part>/x/<feature>`: categorical ids int32 [N] (the vocabulary row our model looks up; OOV rows 0..oov-1),
  bucketized numerics as their bucket id int32 [N] (kind "categorical" for the peer), continuous numerics
  float32 [N] after our transform (clip, signed log1p, standardize: kind "numeric"), sequences int32 [N, L];
- `<part>/len/<feature>`: int32 [N] real tokens per sequence row. Real tokens are packed to the left and the
  rest is 0 (a pad the peer masks by length: an OOV token inside a sequence keeps its OOV row, as in our model);
- `<part>/label`, `<part>/weight`: float32 [N].
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from feature_specs import artifacts, load_spec, spec_hash
from feature_specs.schema import Feature, FeatureSpec
from models import data as model_data
from models.inputs import FeatureInputs, build_feature_inputs, table_key

KIND, VERSION = "rocketctr-peer-data", 1
PARTS = ("train", "validation", "eval")
PEER_KINDS = ("categorical", "numeric", "sequence")
READ_BATCH = 4096


class PeerDataError(ValueError):
    """The export cannot be written as asked (the message names the file or field and what was expected)."""


def array_key(part: str, what: str, feature: str | None = None) -> str:
    """Name of one array in the npz (`train/x/user_id`, `eval/label`, ...); the peer script mirrors this."""
    return f"{part}/{what}" if feature is None else f"{part}/{what}/{feature}"


def meta_path(npz: str | os.PathLike) -> Path:
    """The JSON describing an npz: same folder and stem."""
    return Path(npz).with_suffix(".json")


def peer_kind(f: Feature) -> str:
    """How the peer sees a feature: bucketized numerics are categorical ids, continuous ones dense values."""
    if f.kind == "numeric":
        return "categorical" if f.transform == "bucketize" else "numeric"
    return f.kind


def make_holdout(spec: FeatureSpec, data_dir: str | os.PathLike, fraction: float) -> model_data.Holdout:
    """The validation slice exactly as the training job cuts it (role "all"; use `with_role`).

    models.data.holdout_for (the slice that mirrors the eval split) is used when it exists; older code has only
    the group-hash Holdout. Its signature is matched by parameter name so either calling style works.
    """
    fn = getattr(model_data, "holdout_for", None)
    if fn is None:
        return model_data.Holdout(fraction, "all")
    params = inspect.signature(fn).parameters
    if {"fraction", "role", "data_dir"} <= set(params):
        return fn(spec, fraction=fraction, role="all", data_dir=str(data_dir))
    return fn(spec, str(data_dir), fraction, "all")


def with_role(holdout: model_data.Holdout, role: str) -> model_data.Holdout:
    return dataclasses.replace(holdout, role=role)


def describe_holdout(holdout: model_data.Holdout) -> dict:
    if hasattr(holdout, "describe"):
        return holdout.describe()
    return {"fraction": holdout.fraction, "method": "hash_group"}


@dataclasses.dataclass(frozen=True)
class PeerFeature:
    """One feature as the peer builds it (written to the JSON)."""

    name: str
    kind: str  # PEER_KINDS
    spec_kind: str  # the spec's kind (numeric for a bucketized numeric)
    vocab_size: int | None  # rows of its table (categorical / sequence)
    embedding_dim: int  # the spec's dimension of its table
    embedding_name: str  # the table: features with the same name share one
    towers: tuple[str, ...]
    maxlen: int = 0  # sequence: width of the id matrix
    combiner: str = "mean"  # sequence pooling
    transform: str = "none"  # numeric transform our input layer applied


def peer_features(spec: FeatureSpec, inputs: FeatureInputs, names: tuple[str, ...]) -> list[PeerFeature]:
    out = []
    for name in names:
        f = spec.feature(name)
        key = table_key(f)
        kind = peer_kind(f)
        out.append(PeerFeature(
            name=name, kind=kind, spec_kind=f.kind, vocab_size=None if kind == "numeric" else int(inputs.rows(key)),
            embedding_dim=int(spec.feature(key).embedding_dim), embedding_name=key, towers=tuple(f.towers),
            combiner=f.pooling, transform=f.transform if f.kind == "numeric" else "none"))
    return out


def _encoder(inputs: FeatureInputs, features: list[PeerFeature]):
    """One traced function: model inputs of a batch -> {name: ids | values, name + mask}."""
    names = tuple(f.name for f in features)

    @tf.function(reduce_retracing=True)  # sequence widths differ per batch
    def encode(batch: dict) -> dict:
        enc = inputs.encode(batch, names)
        out = {}
        for f in features:
            e = enc[f.name]
            if f.kind == "numeric":
                out[f.name] = tf.cast(e.scale, tf.float32)
            else:
                out[f.name] = e.ids
                if f.kind == "sequence":
                    out[f"{f.name}\0mask"] = tf.cast(e.mask > 0, tf.bool)
        return out

    return encode


def pack_sequence(ids: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Real tokens to the left (order kept), zeros after, padded/cut to `width`; returns (ids, lengths).

    Why: a peer masks a sequence by its length, so real tokens must form a prefix; our pooling (mean / sum /
    max over the masked tokens) does not depend on their positions.
    """
    order = np.argsort(~mask, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    mask = np.take_along_axis(mask, order, axis=1)
    ids = np.where(mask, ids, 0)
    lengths = mask.sum(axis=1)
    if lengths.size and int(lengths.max()) > width:
        raise PeerDataError(f"a sequence has {int(lengths.max())} tokens, more than the export width {width}")
    n, w = ids.shape
    if w < width:
        ids = np.concatenate([ids, np.zeros((n, width - w), ids.dtype)], axis=1)
    return ids[:, :width], lengths.astype(np.int32)


def read_part(dataset: tf.data.Dataset, encode, features: list[PeerFeature]) -> dict[str, list[np.ndarray]]:
    """Encoded columns of every batch of `dataset` (sequences still per batch: widths differ)."""
    cols: dict[str, list[np.ndarray]] = {"\0label": [], "\0weight": []}
    for batch, labels, weights in dataset:
        for k, v in encode(batch).items():
            cols.setdefault(k, []).append(v.numpy())
        cols["\0label"].append(labels.numpy().astype(np.float32))
        cols["\0weight"].append(weights.numpy().astype(np.float32))
    return cols


def _source_key(data_dir: Path, fraction: float, holdout: dict, names: tuple[str, ...]) -> dict:
    """What an existing export must match to be reused: same data (manifest + stats content), slice, features."""
    h = hashlib.sha256()
    for p in map(Path, (artifacts.manifest_path(data_dir), artifacts.stats_path(data_dir),
                        artifacts.spec_copy_path(data_dir))):
        h.update(p.read_bytes() if p.is_file() else b"-")
    return {"data_dir": str(data_dir.resolve()), "artifacts_sha256": h.hexdigest()[:16],
            "validation_fraction": fraction, "holdout": holdout, "features": list(names)}


def export_peer_data(data_dir: str | os.PathLike, npz: str | os.PathLike, validation_fraction: float, *,
                     spec: FeatureSpec | None = None, names: tuple[str, ...] | None = None,
                     defaults: dict | None = None, batch_size: int = READ_BATCH, reuse: bool = True) -> dict:
    """Write the train (minus the validation slice), validation and eval rows of `data_dir` to `npz` as ids.

    `spec` defaults to the data folder's own copy (what it was preprocessed with); `names` to every feature;
    `defaults` (hyper-parameters matching our config) are stored for the peer script. Returns the JSON
    document written next to the npz; an existing export of the same data, slice and features is reused.
    """
    data_dir = Path(data_dir)
    npz = Path(npz)
    if npz.suffix != ".npz":
        raise PeerDataError(f"{npz}: the export file must end in .npz")
    if spec is None:
        copy = Path(artifacts.spec_copy_path(data_dir))
        if not copy.is_file():
            raise artifacts.ArtifactError(f"{copy}: spec.yaml is missing ({data_dir} is not a preprocessing output)")
        spec = load_spec(copy)
    names = tuple(names or spec.feature_names)
    holdout = make_holdout(spec, data_dir, validation_fraction)
    key = _source_key(data_dir, validation_fraction, describe_holdout(holdout), names)
    meta_file = meta_path(npz)
    if reuse and npz.is_file() and meta_file.is_file():
        old = json.loads(meta_file.read_text())
        if old.get("kind") == KIND and old.get("version") == VERSION and old.get("source") == key:
            if defaults is not None and old.get("defaults") != defaults:
                old["defaults"] = defaults
                meta_file.write_text(json.dumps(old, indent=1, sort_keys=True))
            return old

    inputs = build_feature_inputs(spec, data_dir, names)
    features = peer_features(spec, inputs, names)
    encode = _encoder(inputs, features)
    datasets = {
        "train": model_data.make_dataset(data_dir, spec, "train", batch_size, holdout=with_role(holdout, "train")),
        "validation": (model_data.make_dataset(data_dir, spec, "train", batch_size,
                                               holdout=with_role(holdout, "validation"))
                       if validation_fraction > 0 else None),
        "eval": model_data.make_dataset(data_dir, spec, "eval", batch_size),
    }
    raw = {part: read_part(ds, encode, features) if ds is not None else None for part, ds in datasets.items()}
    widths = {}
    for f in features:
        if f.kind == "sequence":
            seen = [int(m.sum(axis=1).max()) for cols in raw.values() if cols for m in cols[f"{f.name}\0mask"]
                    if m.size]
            widths[f.name] = int(spec.feature(f.name).max_length or max(seen, default=1)) or 1
    features = [dataclasses.replace(f, maxlen=widths.get(f.name, 0)) for f in features]

    arrays: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    positives: dict[str, float] = {}
    for part in PARTS:
        cols = raw[part]
        label = np.concatenate(cols["\0label"]) if cols and cols["\0label"] else np.zeros(0, np.float32)
        weight = np.concatenate(cols["\0weight"]) if cols and cols["\0weight"] else np.zeros(0, np.float32)
        arrays[array_key(part, "label")], arrays[array_key(part, "weight")] = label, weight
        rows[part], positives[part] = int(label.size), float(label.sum())
        for f in features:
            arrays.update(_feature_arrays(part, f, cols, rows[part]))
    for part in PARTS:
        for f in features:
            x = arrays[array_key(part, "x", f.name)]
            if f.vocab_size is not None and x.size and (int(x.min()) < 0 or int(x.max()) >= f.vocab_size):
                raise PeerDataError(f"{part}/{f.name}: ids span [{int(x.min())}, {int(x.max())}], outside the table's "
                                    f"{f.vocab_size} rows")

    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.stem + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, npz)
    doc = {"kind": KIND, "version": VERSION, "source": key, "spec_name": spec.name, "spec_hash": spec_hash(spec),
           "label": spec.label.name, "weighted": spec.weight is not None, "holdout": describe_holdout(holdout),
           "rows": rows, "positives": positives, "features": [dataclasses.asdict(f) for f in features],
           "defaults": defaults or {}, "npz": str(npz.resolve()),
           "layout": "<part>/x/<feature>, <part>/len/<sequence feature>, <part>/label, <part>/weight; "
                     "parts " + ", ".join(PARTS)}
    meta_file.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return doc


def _feature_arrays(part: str, f: PeerFeature, cols: dict | None, n: int) -> dict[str, np.ndarray]:
    """The npz arrays of one feature in one part (empty arrays of the right shape when the part has no rows)."""
    x_key = array_key(part, "x", f.name)
    if f.kind == "numeric":
        return {x_key: np.concatenate(cols[f.name]).astype(np.float32) if n else np.zeros(0, np.float32)}
    if f.kind == "categorical":
        return {x_key: _ids32(np.concatenate(cols[f.name]), part, f) if n else np.zeros(0, np.int32)}
    if not n:
        return {x_key: np.zeros((0, f.maxlen), np.int32), array_key(part, "len", f.name): np.zeros(0, np.int32)}
    ids, lengths = [], []
    for b_ids, b_mask in zip(cols[f.name], cols[f"{f.name}\0mask"]):
        i, ln = pack_sequence(b_ids, b_mask, f.maxlen)
        ids.append(i)
        lengths.append(ln)
    return {x_key: _ids32(np.concatenate(ids), part, f), array_key(part, "len", f.name): np.concatenate(lengths)}


def _ids32(ids: np.ndarray, part: str, f: PeerFeature) -> np.ndarray:
    if ids.size and int(ids.max()) > np.iinfo(np.int32).max:
        raise PeerDataError(f"{part}/{f.name}: id {int(ids.max())} does not fit int32 (the peer's id type)")
    return ids.astype(np.int32)


def load_peer_data(npz: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON document, arrays) of an export: what the tests read back."""
    npz = Path(npz)
    meta = json.loads(meta_path(npz).read_text())
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays
