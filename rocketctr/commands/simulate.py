"""`rocketctr simulate --rows N --out DIR`: write seeded synthetic click logs with a known ground truth."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, required=True, help="number of impressions to write (>= 1)")
    p.add_argument("--out", required=True, help="output directory (must be absent or empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="world and row seed (same seed -> same bytes; default 0)")
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per clicks/truth shard (default 1,000,000)")
    p.add_argument("--gzip", action="store_true", help="write .csv.gz shards")
    p.add_argument("--overwrite", action="store_true", help="replace the simulator's files in a non-empty --out")


def main(args: argparse.Namespace) -> int:
    from pipeline.simulator.click_logs import SimulationError, simulate

    try:
        r = simulate(args.rows, args.out, seed=args.seed, shard_rows=args.shard_rows, gzip=args.gzip,
                     overwrite=args.overwrite)
    except SimulationError as e:
        print(f"rocketctr simulate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r.rows:,} rows ({r.clicks:,} clicks, base CTR {r.base_ctr:.2%}) to {r.out_dir} in "
          f"{len(r.click_files)} shard(s), {r.seconds:.1f} s ({r.rows / max(r.seconds, 1e-9):,.0f} rows/s)")
    if r.truth_auc is None or r.additive_auc is None:
        print(f"AUC undefined: the {r.rows:,} rows hold only one class; details in {r.out_dir}/simulation.json")
    else:
        print(f"ground-truth AUC {r.truth_auc:.4f}, additive-only AUC {r.additive_auc:.4f} "
              f"(gap {r.truth_auc - r.additive_auc:.4f}); details in {r.out_dir}/simulation.json")
    return 0
