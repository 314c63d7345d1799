"""`simulate()`: write seeded synthetic click logs with a known ground truth (the built-in default data).

Output (DIR):
  clicks-00000.csv[.gz]  raw logs in exactly the format of feature_specs/synthetic.yaml (header, 40 columns),
                         shards of `shard_rows` rows;
  truth-00000.csv[.gz]   req_id,user_id,p_true,clk, row-aligned with the clicks shard of the same number;
  simulation.json        seed, rows, clicks, base CTR, world parameters, ground-truth and additive-only AUC,
                         files, seconds, rows/s.
The world (users, ads, truth parameters: see pipeline/simulator/world.py for what effects exist and why) is
fixed-size and built from the seed; rows are generated in chunks of CHUNK_ROWS with a per-chunk seed, so
memory is constant in `rows` and the same seed gives the same bytes. AUCs are computed streaming from
fine score histograms (exact up to ties within a 0.001-logit bin).
"""

from __future__ import annotations

import gzip as gzip_module
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from common import metrics
from feature_specs.loader import load_spec
from pipeline.simulator.rows import CHUNK_ROWS, Chunk, ChunkGenerator, calibrate
from pipeline.simulator.world import World, build_world

SPEC_NAME = "synthetic"
MAX_ROWS = 100_000_000
_CSV_OPTIONS = dict(quoting_style="none", quoting_header="none")
_OUTPUT_GLOBS = ("clicks-*.csv", "clicks-*.csv.gz", "truth-*.csv", "truth-*.csv.gz", "simulation.json")


class SimulationError(ValueError):
    """Bad simulator arguments (the message names the argument and what was expected)."""


@dataclass(frozen=True)
class SimulationResult:
    out_dir: Path
    click_files: tuple[Path, ...]
    truth_files: tuple[Path, ...]
    rows: int
    clicks: int
    base_ctr: float
    truth_auc: float | None  # None: one class only (too few rows to define it)
    additive_auc: float | None
    seconds: float


class StreamingAUC:
    """ROC AUC from per-bin positive/negative counts over logit scores: constant memory for any row count. Only the
    accumulation lives here; the AUC of the bins is common.metrics.auc_from_counts (pairs within a bin count 1/2)."""

    def __init__(self, lo: float = -20.0, hi: float = 10.0, bins: int = 30_000):
        self.lo, self.scale, self.bins = lo, bins / (hi - lo), bins
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)

    def update(self, logit: np.ndarray, label: np.ndarray) -> None:
        b = np.clip(((logit - self.lo) * self.scale).astype(np.int64), 0, self.bins - 1)
        self.pos += np.bincount(b[label == 1], minlength=self.bins)
        self.neg += np.bincount(b[label == 0], minlength=self.bins)

    def result(self) -> float | None:
        """The AUC, or None while only one class has been seen."""
        return metrics.auc_from_counts(self.pos, self.neg)


class _ShardWriter:
    """Appends tables to numbered shard files, starting a new file (with header) every `shard_rows` rows."""

    def __init__(self, out_dir: Path, prefix: str, shard_rows: int, gzip: bool):
        self.out_dir, self.prefix, self.shard_rows, self.gzip = out_dir, prefix, shard_rows, gzip
        self.files: list[Path] = []
        self._sink: io.BufferedIOBase | None = None
        self._raw: io.BufferedIOBase | None = None
        self._left = 0

    def _open(self) -> None:
        self.close()
        path = self.out_dir / f"{self.prefix}-{len(self.files):05d}.csv{'.gz' if self.gzip else ''}"
        self._raw = open(path, "wb")
        # mtime=0 and no file name in the gzip header: same seed -> same bytes
        self._sink = gzip_module.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0,
                                          compresslevel=1) if self.gzip else self._raw
        self.files.append(path)
        self._left = self.shard_rows

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self._left == 0:
                self._open()
            part = table.slice(offset, min(self._left, table.num_rows - offset))
            header = self._left == self.shard_rows
            pacsv.write_csv(part, self._sink, pacsv.WriteOptions(include_header=header, **_CSV_OPTIONS))
            offset += part.num_rows
            self._left -= part.num_rows

    def close(self) -> None:
        if self._sink is not None and self._sink is not self._raw:
            self._sink.close()
        if self._raw is not None:
            self._raw.close()
        self._sink = self._raw = None


def _truth_table(chunk: Chunk) -> pa.Table:
    return pa.table({"req_id": chunk.table["req_id"], "user_id": chunk.table["user_id"],
                     "p_true": pa.array(np.round(chunk.p_true, 6)), "clk": pa.array(chunk.clicks)})


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SimulationError(f"out_dir {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise SimulationError(f"out_dir {out_dir} exists and is not empty (pass overwrite=True / --overwrite "
                                  "to replace the simulator's files in it)")
        for pattern in _OUTPUT_GLOBS:  # only our own outputs; stale shards of a bigger run must not linger
            for p in out_dir.glob(pattern):
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def load_world(seed: int) -> World:
    """The calibrated world of `seed` (the same one every simulate() call with that seed uses)."""
    return calibrate(build_world(seed))


def simulate(rows: int, out_dir: str | Path, seed: int = 0, shard_rows: int = 1_000_000, gzip: bool = False,
             overwrite: bool = False) -> SimulationResult:
    """Write `rows` simulated impressions (+ truth and simulation.json) into `out_dir`; see the module doc."""
    for name, value, lo in (("rows", rows, 1), ("shard_rows", shard_rows, 1), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise SimulationError(f"{name} must be an integer >= {lo}, got {value!r}")
    if rows > MAX_ROWS:
        raise SimulationError(f"rows must be <= {MAX_ROWS:,}, got {rows:,}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    columns = load_spec(SPEC_NAME).format.columns
    start = time.perf_counter()
    world = load_world(seed)
    gen = ChunkGenerator(world)
    clicks_w, truth_w = _ShardWriter(out, "clicks", shard_rows, gzip), _ShardWriter(out, "truth", shard_rows, gzip)
    truth_auc, additive_auc = StreamingAUC(), StreamingAUC()
    clicks, p_sum = 0, 0.0
    try:
        for k, row0 in enumerate(range(0, rows, CHUNK_ROWS)):
            chunk = gen.generate(row0, min(CHUNK_ROWS, rows - row0), np.random.default_rng(np.random.SeedSequence([seed, 1, k])))
            if tuple(chunk.table.column_names) != columns:
                raise AssertionError(f"simulator columns drifted from spec {SPEC_NAME!r}: {chunk.table.column_names}")
            clicks_w.write(chunk.table)
            truth_w.write(_truth_table(chunk))
            truth_auc.update(np.log(chunk.p_true) - np.log1p(-chunk.p_true), chunk.clicks)
            additive_auc.update(chunk.additive, chunk.clicks)
            clicks += int(chunk.clicks.sum())
            p_sum += float(chunk.p_true.sum())
    finally:
        clicks_w.close()
        truth_w.close()
    seconds = time.perf_counter() - start
    result = SimulationResult(out_dir=out, click_files=tuple(clicks_w.files), truth_files=tuple(truth_w.files),
                              rows=rows, clicks=clicks, base_ctr=clicks / rows, truth_auc=truth_auc.result(),
                              additive_auc=additive_auc.result(), seconds=seconds)
    _write_summary(result, world, seed, shard_rows, gzip, p_sum / rows)
    return result


def _write_summary(r: SimulationResult, world: World, seed: int, shard_rows: int, gzip: bool, mean_p: float) -> None:
    """simulation.json. Timing fields vary run to run; everything else is a function of the arguments."""
    summary = {
        "spec": SPEC_NAME, "seed": seed, "rows": r.rows, "clicks": r.clicks, "base_ctr": round(r.base_ctr, 6),
        "mean_p_true": round(mean_p, 6), "truth_auc": _round(r.truth_auc), "additive_auc": _round(r.additive_auc),
        "world": world.describe(), "chunk_rows": CHUNK_ROWS, "shard_rows": shard_rows, "gzip": gzip,
        "click_files": [p.name for p in r.click_files], "truth_files": [p.name for p in r.truth_files],
        "seconds": round(r.seconds, 3), "rows_per_s": round(r.rows / r.seconds, 1) if r.seconds > 0 else None,
    }
    (r.out_dir / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)
