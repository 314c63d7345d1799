"""Load a YAML feature spec into `FeatureSpec`, rejecting unknown keys and impossible values.

Every error names the file, the feature (or section) and the key, because a spec typo that is silently
ignored is exactly how an ablation flag stops working without anyone noticing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from common import fs, typed_yaml
from common.typed_yaml import deep_merge
from feature_specs.schema import (DTYPES, KINDS, NUMERIC_TRANSFORMS, POOLINGS, SIDES, TOWERS, Feature,
                                  FeatureSpec, InputFormat, Label, SideTable, Split, Vocabulary)

SPEC_DIR = Path(__file__).resolve().parent
SPLIT_METHODS = ("hash_group", "hash_row", "time_fraction", "time_last_day")


class SpecError(ValueError):
    """A feature spec is malformed; the message names file, feature/section and key."""


class _Ctx:
    """One section of a spec (the file and e.g. `feature 'uid'`): common.typed_yaml's checks, reported as
    SpecErrors naming the file, the section and the key."""

    def __init__(self, path: str, where: str):
        self.path, self.where = path, where

    def fail(self, key: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {self.where}: key {key!r}: {msg}")

    def _checked(self, check, value: Any, *args: Any, key: str | None = None) -> Any:
        """`check(value, *args)`; its Problem becomes a SpecError naming `key` (the key whose value was checked) or,
        for a mapping check, the culprit key the problem names."""
        try:
            return check(value, *args)
        except typed_yaml.Problem as p:
            key = key if key is not None else (p.path[0] if p.path else None)
            raise (SpecError(f"{self.path}: {self.where}: {p.message}") if key is None
                   else self.fail(key, p.message)) from None

    def check_keys(self, d: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
        return self._checked(typed_yaml.mapping, d, allowed, sorted(required))

    def typed(self, d: dict, key: str, typ: type | tuple, default: Any = None) -> Any:
        return self._checked(typed_yaml.typed, d.get(key, default), typ, key=key)

    def choice(self, d: dict, key: str, options: tuple[str, ...], default: str) -> str:
        return self._checked(typed_yaml.choice, d.get(key, default), options, key=key)


def _str_list(ctx: _Ctx, d: dict, key: str, default: tuple = ()) -> tuple[str, ...]:
    v = d.get(key, list(default))
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) for x in v):
        raise ctx.fail(key, f"expected a list of strings, got {v!r}")
    return tuple(str(x) for x in v)


def _feature(path: str, i: int, d: Any) -> Feature:
    name = d.get("name") if isinstance(d, dict) else None
    ctx = _Ctx(path, f"feature {name!r}" if name else f"features[{i}]")
    ctx.check_keys(d, {"name", "kind", "side", "source", "towers", "embedding_dim", "dtype", "vocab",
                       "hash_buckets", "shares_embedding_with", "delimiter", "max_length", "pooling", "transform",
                       "num_buckets", "default", "clip_min", "clip_max"}, {"name", "kind", "side"})
    name = ctx.typed(d, "name", str)
    kind = ctx.choice(d, "kind", KINDS, "categorical")
    side = ctx.choice(d, "side", SIDES, "context")
    towers = _str_list(ctx, d, "towers", TOWERS)
    if not towers or any(t not in TOWERS for t in towers):
        raise ctx.fail("towers", f"must be a non-empty subset of {list(TOWERS)}, got {list(towers)}")
    dim = ctx.typed(d, "embedding_dim", int, 8)
    if not 1 <= dim <= 1024:
        raise ctx.fail("embedding_dim", f"must be in 1..1024, got {dim}")
    kw: dict[str, Any] = dict(name=name, kind=kind, side=side, source=ctx.typed(d, "source", str, name),
                              towers=towers, embedding_dim=dim)
    cat_keys = {"dtype", "vocab", "hash_buckets", "shares_embedding_with"}
    seq_keys = {"delimiter", "max_length", "pooling"}
    num_keys = {"transform", "num_buckets", "default", "clip_min", "clip_max"}
    allowed = {"categorical": cat_keys, "sequence": cat_keys | seq_keys, "numeric": num_keys}[kind]
    for k in (cat_keys | seq_keys | num_keys) - allowed:
        if k in d:
            raise ctx.fail(k, f"does not apply to a {kind} feature")
    if kind in ("categorical", "sequence"):
        kw["dtype"] = ctx.choice(d, "dtype", DTYPES, "string")
        hb = ctx.typed(d, "hash_buckets", int)
        shares = ctx.typed(d, "shares_embedding_with", str)
        if hb is not None and hb < 1:
            raise ctx.fail("hash_buckets", f"must be >= 1, got {hb}")
        vocab = None
        if "vocab" in d:
            if hb is not None or shares is not None:
                raise ctx.fail("vocab", "cannot be combined with hash_buckets or shares_embedding_with")
            vctx = _Ctx(path, f"feature {name!r} vocab")
            vd = vctx.check_keys(d["vocab"] or {}, {"min_count", "top_k", "oov_buckets"})
            vocab = Vocabulary(min_count=vctx.typed(vd, "min_count", int, 1), top_k=vctx.typed(vd, "top_k", int),
                               oov_buckets=vctx.typed(vd, "oov_buckets", int, 1))
            if vocab.min_count < 1:
                raise vctx.fail("min_count", f"must be >= 1, got {vocab.min_count}")
            if vocab.top_k is not None and vocab.top_k < 1:
                raise vctx.fail("top_k", f"must be >= 1, got {vocab.top_k}")
            if not 1 <= vocab.oov_buckets <= 1000:
                raise vctx.fail("oov_buckets", f"must be in 1..1000, got {vocab.oov_buckets}")
        elif hb is None and shares is None:
            vocab = Vocabulary()
        if hb is not None and shares is not None:
            raise ctx.fail("hash_buckets", "cannot be combined with shares_embedding_with")
        kw.update(vocab=vocab, hash_buckets=hb, shares_embedding_with=shares)
    if kind == "sequence":
        delim = ctx.typed(d, "delimiter", str, "|")
        if len(delim) != 1:
            raise ctx.fail("delimiter", f"must be one character, got {delim!r}")
        max_len = ctx.typed(d, "max_length", int, 50)
        if not 1 <= max_len <= 10000:
            raise ctx.fail("max_length", f"must be in 1..10000, got {max_len}")
        kw.update(delimiter=delim, max_length=max_len, pooling=ctx.choice(d, "pooling", POOLINGS, "mean"))
    if kind == "numeric":
        transform = ctx.choice(d, "transform", NUMERIC_TRANSFORMS, "standardize")
        nb = ctx.typed(d, "num_buckets", int, 0)
        if transform == "bucketize" and not 2 <= nb <= 1000:
            raise ctx.fail("num_buckets", f"bucketize needs num_buckets in 2..1000, got {nb}")
        if transform != "bucketize" and nb:
            raise ctx.fail("num_buckets", f"only applies with transform: bucketize (transform is {transform!r})")
        lo, hi = ctx.typed(d, "clip_min", float), ctx.typed(d, "clip_max", float)
        if lo is not None and hi is not None and lo >= hi:
            raise ctx.fail("clip_min", f"must be below clip_max ({lo} >= {hi})")
        kw.update(transform=transform, num_buckets=nb, default=ctx.typed(d, "default", float, 0.0),
                  clip_min=lo, clip_max=hi)
    return Feature(**kw)


def _side_table(path: str, i: int, d: Any) -> SideTable:
    ctx = _Ctx(path, f"side_tables[{i}]")
    ctx.check_keys(d, {"name", "file", "key", "columns", "delimiter", "header", "encoding"},
                   {"name", "file", "key", "columns"})
    cols = _str_list(ctx, d, "columns")
    key = ctx.typed(d, "key", str)
    if key not in cols:
        raise ctx.fail("key", f"{key!r} is not among the table's columns {list(cols)}")
    return SideTable(name=ctx.typed(d, "name", str), file=ctx.typed(d, "file", str), key=key, columns=cols,
                     delimiter=ctx.typed(d, "delimiter", str, ","), header=ctx.typed(d, "header", bool, False),
                     encoding=ctx.typed(d, "encoding", str, "utf-8"))


def spec_from_dict(raw: Any, path: str = "<dict>") -> FeatureSpec:
    """Build a validated FeatureSpec from the parsed YAML mapping."""
    top = _Ctx(path, "top level")
    top.check_keys(raw, {"name", "description", "format", "label", "group_key", "weight", "timestamp",
                         "side_tables", "split", "features", "negative_sampling_rate"},
                   {"name", "format", "label", "features"})
    fctx = _Ctx(path, "format")
    fd = fctx.check_keys(raw["format"], {"delimiter", "header", "columns", "missing_values", "encoding"},
                         {"columns"})
    fmt = InputFormat(delimiter=fctx.typed(fd, "delimiter", str, ","), header=fctx.typed(fd, "header", bool, False),
                      columns=_str_list(fctx, fd, "columns"),
                      missing_values=_str_list(fctx, fd, "missing_values", ("", "NULL")),
                      encoding=fctx.typed(fd, "encoding", str, "utf-8"))
    if not fmt.columns or len(set(fmt.columns)) != len(fmt.columns):
        raise fctx.fail("columns", "must be a non-empty list of distinct column names")
    if len(fmt.delimiter) != 1:
        raise fctx.fail("delimiter", f"must be one character, got {fmt.delimiter!r}")
    tables = tuple(_side_table(path, i, t) for i, t in enumerate(top.typed(raw, "side_tables", list, []) or []))
    for t in tables:
        if t.key not in fmt.columns:
            raise SpecError(f"{path}: side_tables {t.name!r}: key 'key': join column {t.key!r} is not a column "
                            f"of the main input")
    lctx = _Ctx(path, "label")
    ld = lctx.check_keys(raw["label"], {"name", "source", "threshold", "op"}, {"name"})
    label = Label(name=lctx.typed(ld, "name", str), source=lctx.typed(ld, "source", str, ld["name"]),
                  threshold=lctx.typed(ld, "threshold", float), op=lctx.choice(ld, "op", (">=", ">"), ">="))
    sctx = _Ctx(path, "split")
    sd = sctx.check_keys(raw.get("split") or {}, {"method", "eval_fraction", "seed"})
    split = Split(method=sctx.choice(sd, "method", SPLIT_METHODS, "hash_group"),
                  eval_fraction=sctx.typed(sd, "eval_fraction", float, 0.1), seed=sctx.typed(sd, "seed", int, 0))
    if not 0.0 < split.eval_fraction < 1.0:
        raise sctx.fail("eval_fraction", f"must be in (0, 1), got {split.eval_fraction}")
    feats_raw = top.typed(raw, "features", list)
    if not feats_raw:
        raise top.fail("features", "must be a non-empty list")
    features = tuple(_feature(path, i, f) for i, f in enumerate(feats_raw))
    rate = top.typed(raw, "negative_sampling_rate", float, 1.0)
    if not 0.0 < rate <= 1.0:
        raise top.fail("negative_sampling_rate", f"must be in (0, 1] (the probability of keeping a train "
                       f"negative; 1 = keep all), got {rate}")
    spec = FeatureSpec(name=top.typed(raw, "name", str), path=path, format=fmt, label=label, features=features,
                       group_key=top.typed(raw, "group_key", str), weight=top.typed(raw, "weight", str),
                       timestamp=top.typed(raw, "timestamp", str), side_tables=tables, split=split,
                       description=top.typed(raw, "description", str, ""), negative_sampling_rate=rate)
    _cross_check(spec)
    return spec


def _cross_check(spec: FeatureSpec) -> None:
    """Checks that need the whole spec: names unique, sources exist, shared tables compatible."""
    path, cols = spec.path, set(spec.all_columns)
    seen: set[str] = set()
    for f in spec.features:
        ctx = _Ctx(path, f"feature {f.name!r}")
        if f.name in seen:
            raise ctx.fail("name", "duplicate feature name")
        seen.add(f.name)
        if f.source not in cols:
            raise ctx.fail("source", f"column {f.source!r} is not in format.columns or any side table")
        if f.name in (spec.label.name,) or (spec.weight and f.name == spec.weight):
            raise ctx.fail("name", "a feature cannot be the label or the weight")
        if f.shares_embedding_with is not None:
            try:
                owner = spec.feature(f.shares_embedding_with)
            except KeyError:
                raise ctx.fail("shares_embedding_with", f"no feature named {f.shares_embedding_with!r}") from None
            if owner.kind == "numeric" or owner.shares_embedding_with or owner.embedding_dim != f.embedding_dim:
                raise ctx.fail("shares_embedding_with", f"{owner.name!r} must be a categorical/sequence feature "
                               f"with its own table and the same embedding_dim ({owner.embedding_dim})")
    for key, value in (("label", spec.label.source), ("group_key", spec.group_key), ("weight", spec.weight),
                       ("timestamp", spec.timestamp)):
        if value is not None and value not in cols:
            raise SpecError(f"{path}: top level: key {key!r}: column {value!r} is not in format.columns "
                            f"or any side table")
    if spec.split.method.startswith("time") and spec.timestamp is None:
        raise SpecError(f"{path}: split: key 'method': {spec.split.method!r} needs a top-level timestamp column")
    if spec.split.method == "hash_group" and spec.group_key is None:
        raise SpecError(f"{path}: split: key 'method': 'hash_group' needs a top-level group_key")


def load_spec(path: str | os.PathLike) -> FeatureSpec:
    """Read and validate a spec file. A bare name like `taobao` resolves to feature_specs/taobao.yaml."""
    if not fs.is_local(path):  # a data or run folder's copy on gs://, hdfs://, ram://
        return _load_url(fs.as_str(path))
    p = Path(path)
    if not p.exists() and not p.suffix and (SPEC_DIR / f"{p}.yaml").exists():
        p = SPEC_DIR / f"{p}.yaml"
    if not p.exists():
        raise SpecError(f"{path}: spec file not found")
    return spec_from_dict(resolved_raw(p), str(p))


def _load_url(url: str) -> FeatureSpec:
    """A spec at a URL (read through common.fs): it must be self-contained, as the resolved copy preprocessing
    writes into its output is, since `extends` names files next to a local spec."""
    if not fs.exists(url):
        raise SpecError(f"{url}: spec file not found")
    try:
        raw = yaml.safe_load(fs.read_text(url))
    except yaml.YAMLError as e:
        raise SpecError(f"{url}: not valid YAML: {e}") from None
    if isinstance(raw, dict) and "extends" in raw:
        raise SpecError(f"{url}: top level: key 'extends': a spec read from a URL must be self-contained (the "
                        f"resolved copy preprocessing writes); copy it locally to resolve {raw['extends']!r}")
    return spec_from_dict(raw, url)


def _read_yaml(p: Path) -> Any:
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None


def resolved_raw(p: Path, _seen: tuple[str, ...] = ()) -> Any:
    """The spec's mapping with `extends: <spec>` resolved: the named spec (a shipped name or a path next to this
    file) with this file's top-level keys deep-merged over it. Why: a variant of a log (its cold-start split, a
    sampled copy) states only what differs, so the two cannot drift apart."""
    raw = _read_yaml(p)
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    parent = str(raw.pop("extends"))
    base = p.parent / parent if (p.parent / parent).is_file() else SPEC_DIR / f"{parent}.yaml"
    if not base.is_file():
        raise SpecError(f"{p}: top level: key 'extends': no spec {parent!r} (neither {p.parent / parent} nor a "
                        f"shipped spec)")
    if str(base.resolve()) in _seen:
        raise SpecError(f"{p}: top level: key 'extends': a cycle through {base}")
    return deep_merge(resolved_raw(base, _seen + (str(base.resolve()),)), raw)


def resolved_text(path: str | os.PathLike) -> str:
    """The spec file's text, or for a spec that `extends` another the resolved YAML: what a data folder keeps as
    its spec.yaml, so it never depends on a spec file that may later change."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    raw = _read_yaml(p)
    if not isinstance(raw, dict) or "extends" not in raw:
        return text
    return f"# resolved from {p.name} (extends {raw['extends']})\n" + yaml.safe_dump(
        resolved_raw(p), sort_keys=False, allow_unicode=True)


def spec_to_dict(spec: FeatureSpec) -> dict:
    d = asdict(spec)
    d.pop("path")
    return d


def spec_hash(spec: FeatureSpec) -> str:
    """A stable hash of the spec's content (not its path), recorded in manifests and exports.

    negative_sampling_rate counts only when it samples (< 1), so specs without it keep the hash they had
    before the field existed (recorded hashes of older data and runs still match)."""
    d = spec_to_dict(spec)
    if d.get("negative_sampling_rate") == 1.0:
        d.pop("negative_sampling_rate")
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def shipped_specs() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.yaml"))
