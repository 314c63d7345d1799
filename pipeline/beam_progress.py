"""Progress of the Beam jobs: a line per worker while the job runs, the Beam counters as a table at its end.

While a Beam job runs, the driver cannot ask the runner how far it is on every runner: the FnApiRunner's
`run()` returns only when the job is done, and `PipelineResult.metrics()` of a running job is not generally
available. So the progress comes from the workers: `ReportProgress`, a pass-through step after the read, counts
the elements each worker process has seen and logs one line per interval (common.progress) to that process's
stderr, which is the user's terminal on the local runners and the worker log on Dataflow, Flink or Spark.
It also feeds a Beam counter, so the total appears in the end-of-job table.

At the end `print_counters` prints every Beam counter of the job (read, written, rejected by reason, ...) summed
over steps, from `result.metrics().query()`; a runner that reports no metrics says so instead of a table.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

import apache_beam as beam
from apache_beam.metrics import Metrics

from common.progress import ProgressReporter, default_interval

FLUSH_EVERY = 256  # elements between two looks at the clock (the per-element cost stays one add and one compare)

_LOCK = threading.Lock()
_REPORTERS: dict[tuple[str, str], ProgressReporter] = {}  # (job, unit) -> this process's reporter


def _process_reporter(job: str, unit: str, interval: float) -> ProgressReporter:
    """One reporter per job and worker process, shared by every DoFn instance (thread) of that process."""
    key = (job, unit)
    with _LOCK:
        rep = _REPORTERS.get(key)
        if rep is None:
            rep = _REPORTERS[key] = ProgressReporter(f"{job} worker pid {os.getpid()}", unit=unit,
                                                     interval=interval, bar=False)
        return rep


class ReportProgress(beam.DoFn):
    """Pass-through step: counts elements into the Beam counter `<job>/<unit>_seen` and a per-worker progress
    line every `interval` seconds (the driver's interval, so remote workers follow --progress-seconds too)."""

    def __init__(self, job: str, unit: str = "rows", interval: float | None = None) -> None:
        super().__init__()
        self.job, self.unit = job, unit
        self.interval = default_interval() if interval is None else interval
        self._pending = 0

    def setup(self) -> None:
        self._reporter = _process_reporter(self.job, self.unit, self.interval)
        self._counter = Metrics.counter(self.job, f"{self.unit}_seen")

    def start_bundle(self) -> None:
        self._pending = 0

    def process(self, element):
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self._flush()
        return (element,)

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        n, self._pending = self._pending, 0
        if n:
            self._counter.inc(n)
            with _LOCK:
                self._reporter.advance(n)


def counters(result) -> list[tuple[str, str, int]] | None:
    """(namespace, name, value) of every Beam counter, summed over steps and sorted; None when the runner does
    not report metrics."""
    try:
        found = result.metrics().query()
    except Exception:  # noqa: BLE001 - some runners do not implement metrics(); the caller says so
        return None
    totals: dict[tuple[str, str], int] = {}
    for c in found.get("counters", []):
        key = (c.key.metric.namespace, c.key.metric.name)
        totals[key] = totals.get(key, 0) + int(c.committed or c.attempted or 0)
    return [(ns, name, v) for (ns, name), v in sorted(totals.items())]


def counter_totals(result) -> dict[str, int]:
    """{counter name: value} summed over namespaces and steps ({} when the runner reports no metrics)."""
    out: dict[str, int] = {}
    for _ns, name, v in counters(result) or ():
        out[name] = out.get(name, 0) + v
    return dict(sorted(out.items()))


def counters_table(rows: list[tuple[str, str, int]] | None) -> str:
    """A small aligned table (namespace, counter, value)."""
    if rows is None:
        return "  (this runner does not report Beam metrics)"
    if not rows:
        return "  (no counters)"
    w_ns = max(len("namespace"), *(len(r[0]) for r in rows))
    w_name = max(len("counter"), *(len(r[1]) for r in rows))
    values = [f"{v:,}" for _, _, v in rows]
    w_v = max(len("value"), *(len(v) for v in values))
    lines = [f"  {'namespace':<{w_ns}}  {'counter':<{w_name}}  {'value':>{w_v}}"]
    lines += [f"  {ns:<{w_ns}}  {name:<{w_name}}  {v:>{w_v}}" for (ns, name, _), v in zip(rows, values)]
    return "\n".join(lines)


def print_counters(result, job: str, stream: TextIO | None = None) -> str:
    """Print the job's Beam counters as a table (stderr by default); returns the text."""
    text = f"[{job}] Beam counters:\n{counters_table(counters(result))}\n"
    out = stream if stream is not None else sys.stderr
    out.write(text)
    out.flush()
    return text
