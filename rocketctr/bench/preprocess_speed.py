"""`rocketctr bench preprocess --rows N`: simulator rows -> the preprocessing job; prints rows/s and peak memory.

Peak memory is the largest resident set of the whole process tree (driver + Beam worker processes), sampled
every 0.2 s. CPU seconds are reported too: on a shared machine rows per CPU-second is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from feature_specs.artifacts import read_manifest


class TreeMemory:
    """Samples the RSS sum of this process and all its descendants in a background thread."""

    def __init__(self, interval: float = 0.2):
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished (reaped) children, e.g. Beam workers."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rocketctr bench preprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="simulator rows to generate (default 1M)")
    parser.add_argument("--input", help="use this input pattern instead of generating rows")
    parser.add_argument("--spec", default="synthetic")
    parser.add_argument("--workers", type=int, default=2, help="FnApiRunner worker processes")
    parser.add_argument("--workdir", help="where to put generated data and output (default: a temp folder)")
    args, beam_args = parser.parse_known_args(argv)

    from pipeline.beam_options import with_defaults
    from pipeline.preprocess.preprocess_job import preprocess

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-preprocess-"))
    pattern = args.input
    if pattern is None:
        from pipeline.simulator.click_logs import simulate

        t = time.perf_counter()
        res = simulate(args.rows, work / "raw", seed=0, overwrite=True)
        pattern = str(work / "raw" / "clicks-*.csv")
        print(f"simulated {res.rows:,} rows in {time.perf_counter() - t:.1f}s -> {pattern}")
    beam_args = with_defaults(beam_args, args.workers)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    with TreeMemory() as mem:
        out = preprocess(args.spec, pattern, str(work / "out"), beam_args=beam_args, overwrite=True)
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    rows = read_manifest(out)["rows"]["read"]
    print(f"preprocess bench: {rows:,} rows in {seconds:.1f}s wall = {rows / seconds:,.0f} rows/s end to end "
          f"({' '.join(beam_args)}); CPU {cpu:.1f}s = {rows / max(cpu, 1e-9):,.0f} rows per CPU-second; "
          f"peak RSS (driver + workers) {mem.peak / 2 ** 20:,.0f} MiB; load average "
          f"{' '.join(f'{x:.1f}' for x in psutil.getloadavg())} on {psutil.cpu_count()} CPUs")
    return 0
