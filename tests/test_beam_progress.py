"""pipeline.beam_progress on a real Beam runner (the in-process FnApiRunner): the pass-through step keeps every
element, counts them into a Beam counter and logs per-worker lines; the end-of-job counters table."""

from __future__ import annotations

import io
import uuid

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipeline.beam_progress import ReportProgress, counter_totals, counters, counters_table, print_counters


def _run(job: str, n: int, interval: float):
    p = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"]))
    out = (p | beam.Create(range(n), reshuffle=False)
           | "Progress" >> beam.ParDo(ReportProgress(job, "items", interval=interval))
           | beam.Map(lambda x: x * 2))
    assert_that(out, equal_to([2 * i for i in range(n)]))  # a pass-through: nothing lost, nothing added
    _ = (p | "Bad" >> beam.Create(["x", "y", "x"])  # a job's own counters appear in the same table
         | "Reject" >> beam.Map(lambda r: beam.metrics.Metrics.counter(job, f"rejected_{r}").inc()))
    result = p.run()
    result.wait_until_finish()
    return result


def test_counts_every_element_and_prints_the_counters_table(capsys):
    job = f"job{uuid.uuid4().hex[:6]}"  # reporters are per process and job: a fresh name per test
    result = _run(job, 1000, interval=3600.0)
    rows = counters(result)
    assert (job, "items_seen", 1000) in rows
    assert (job, "rejected_x", 2) in rows and (job, "rejected_y", 1) in rows
    assert counter_totals(result)["items_seen"] == 1000
    out = io.StringIO()
    text = print_counters(result, "demo", out)
    assert out.getvalue() == text
    lines = text.splitlines()
    assert lines[0] == "[demo] Beam counters:"
    assert lines[1].split() == ["namespace", "counter", "value"]
    assert any(line.split() == [job, "items_seen", "1,000"] for line in lines)
    assert "worker pid" not in capsys.readouterr().err  # an hour-long interval: no progress line yet


def test_logs_a_progress_line_per_worker_when_the_interval_has_passed(capsys):
    job = f"job{uuid.uuid4().hex[:6]}"
    _run(job, 2000, interval=1e-9)  # any time between two flushes (every 256 elements) is an interval
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"[{job} worker pid ")]
    assert lines, "no per-worker progress line"
    assert all(" items, " in line and "items/s" in line and "ETA" not in line for line in lines)


def test_table_says_when_a_runner_reports_no_metrics():
    class NoMetrics:
        def metrics(self):
            raise NotImplementedError("this runner has no metrics")

    assert counters(NoMetrics()) is None and counter_totals(NoMetrics()) == {}
    assert "does not report Beam metrics" in counters_table(None)
    assert counters_table([]) == "  (no counters)"
