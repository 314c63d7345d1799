"""`rocketctr spec FILE`: validate a spec and print its features and the derived parse spec."""

from __future__ import annotations

import argparse
import sys

from feature_specs.loader import SpecError, load_spec, spec_hash


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to a YAML spec, or a shipped spec's name (e.g. taobao)")


def main(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"invalid spec: {e}", file=sys.stderr)
        return 1
    from feature_specs.derive import parse_spec, record_fields

    print(f"spec {spec.name} ({spec.path}), hash {spec_hash(spec)}")
    print(f"label: {spec.label.name} <- {spec.label.source}"
          + (f" {spec.label.op} {spec.label.threshold}" if spec.label.threshold is not None else " (0/1)"))
    print(f"group key: {spec.group_key}  weight: {spec.weight}  timestamp: {spec.timestamp}  "
          f"split: {spec.split.method} eval_fraction={spec.split.eval_fraction}")
    for t in spec.side_tables:
        print(f"side table {t.name}: {t.file} joined on {t.key}")
    print(f"{len(spec.features)} features:")
    print(f"  {'name':24} {'kind':11} {'side':7} {'towers':14} {'dim':>4}  details")
    for f in spec.features:
        if f.kind == "numeric":
            detail = f"transform={f.transform}" + (f" buckets={f.num_buckets}" if f.num_buckets else "")
        else:
            detail = (f"hash_buckets={f.hash_buckets}" if f.is_hashed else
                      f"shares {f.shares_embedding_with}" if f.shares_embedding_with else
                      f"vocab min_count={f.vocab.min_count} top_k={f.vocab.top_k}")
            if f.kind == "sequence":
                detail += f" max_length={f.max_length} pooling={f.pooling}"
        print(f"  {f.name:24} {f.kind:11} {f.side:7} {'+'.join(f.towers):14} {f.embedding_dim:>4}  {detail}")
    print("parse spec (tf.io.parse_example):")
    ps = parse_spec(spec)
    for key, rf in record_fields(spec).items():
        print(f"  {key:24} {rf.role:10} {ps[key]!r}")
    return 0
