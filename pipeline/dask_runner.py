"""Beam on a Dask cluster: Beam's DaskRunner (apache_beam.runners.dask, 2.77) with the gaps that make it drop or
mix up data in this project's jobs filled in. Choose it with `--runner=DaskRunner` (pipeline/beam_options.py maps the
name here) and `--dask_client_address=HOST:PORT`; docs/RUNNERS.md has the commands.

What the stock runner does with our pipelines, and what this module does instead (tests/test_dask_runner.py shows
each on a real cluster):

1. It computes only the bag of the LAST transform visited, so of several sinks only one is written. Here every
   leaf is computed, in one graph (shared steps run once).
2. A multi-output ParDo (`with_outputs`, `TaggedOutput`) is not split by tag: every consumer gets all outputs of
   all tags. Here each output PCollection is its own bag, filtered by tag.
3. Outputs of `finish_bundle` are dropped (gathered before finish_bundle runs). Here they are kept.
4. `beam.io.Read` (ReadFromText, ReadFromTFRecord, every BoundedSource) becomes a no-op without data. Here the
   source is split in the driver and each bundle read on a worker.
5. A side input is re-computed from scratch inside every task that reads it (with Dask's local scheduler on the
   worker). Here it is one Delayed value computed once by the cluster and shipped to the tasks.
6. `metrics()` raises. Here Beam counters are collected per bundle and summed (distributions, gauges etc. are not).

Still not supported (raises NotImplementedError naming the transform, nothing is skipped silently): sources other
than bounded ones (Impulse, unbounded reads), windowing other than the global window, state and timers. DoFn
setup/teardown run once per bundle (a Dask partition).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricKey, MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.metrics.metricbase import MetricName
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupAlsoByWindow, _GroupByKeyOnly, _Read, \
    _Reshuffle, dask_overrides
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import counters
from apache_beam.utils.windowed_value import WindowedValue

ITEMS_PER_CREATE_PARTITION = 128
READ_BUNDLE_BYTES = 64 << 20
_METRICS = "__rocketctr_metrics__"  # the tag under which a bundle reports its counters


def _global(value: Any) -> WindowedValue:
    return value if isinstance(value, WindowedValue) else WindowedValue(value, 0, (GlobalWindow(),))


class _TagReceiver(Receiver):
    """Collects a DoFn's outputs of one tag as (tag, value) pairs (values of the global window)."""

    def __init__(self, tag: str | None, out: list):
        self.tag, self.out = tag, out

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        self[tag] = _TagReceiver(tag, self.out)
        return self[tag]


def _run_bundle(items: Iterable, label: str, fn: beam.DoFn, args: list, kwargs: dict, views: list,
                *side_values: list) -> list:
    """One Dask partition = one Beam bundle: setup, start, process, finish (its outputs kept), teardown; returns
    (tag, value) pairs plus one (_METRICS, counters) pair."""
    out: list = []
    receivers = _Receivers(out)
    side_inputs = [SideInputMap(cls, options, [_global(v) for v in values])
                   for (cls, options), values in zip(views, side_values)]
    handler = _OutputHandler(window_fn=GlobalWindows(), main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    invoker = DoFnInvoker.create_invoker(DoFnSignature(fn), handler, context=DoFnContext(label, state=None),
                                         side_inputs=side_inputs, input_args=args, input_kwargs=kwargs,
                                         user_state_context=None,
                                         bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    sampler = statesampler.StateSampler("dask", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer(label)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(_global(item))
            invoker.invoke_finish_bundle()
            invoker.invoke_teardown()
    finally:
        statesampler.set_current_tracker(None)
    found = container.get_cumulative().counters
    out.append((_METRICS, [(k.step, k.metric.namespace, k.metric.name, v) for k, v in found.items()]))
    return out


def _read_bundles(bundles: Iterable) -> list:
    return [x for b in bundles for x in b.source.read(b.source.get_range_tracker(b.start_position, b.stop_position))]


def _with_tag(pairs: Iterable, tag: str | None) -> list:
    return [v for t, v in pairs if t == tag]


def _concat(*parts: list) -> list:
    return [x for part in parts for x in part]


class _BagBuilder(PipelineVisitor):
    """Translates each leaf transform into a dask Bag per output PCollection."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set[pvalue.PCollection] = set()
        self.metric_bags: list = []
        self.sinks: list = []  # leaf transforms without outputs (none in Beam's Python SDK, kept for safety)

    def visit_transform(self, node: AppliedPTransform) -> None:
        import dask.bag as db

        t = node.transform
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        self.consumed.update(inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        bags = [self.bags[i] for i in inputs]
        if isinstance(t, _Create):
            n = len(t.values)
            parts = self.bag_kwargs.get("npartitions") or max(1, math.ceil(
                n / (self.bag_kwargs.get("partition_size") or ITEMS_PER_CREATE_PARTITION)))
            out = db.from_sequence(list(t.values), npartitions=min(parts, max(n, 1)))
        elif isinstance(t, _Read):
            if not isinstance(t.source, beam.io.iobase.BoundedSource):
                raise NotImplementedError(f"DaskRunner: {node.full_label} reads an unbounded source")
            split = list(t.source.split(READ_BUNDLE_BYTES))
            out = db.from_sequence(split, npartitions=max(1, len(split))).map_partitions(_read_bundles)
        elif type(t) is beam.ParDo:
            out = self._pardo(node, bags[0])
        elif isinstance(t, _GroupByKeyOnly):
            # task shuffle: the disk one (dask's default when no client is active yet) only works in one process
            out = bags[0].groupby(_key, shuffle="tasks").map_partitions(_flat_groups)
        elif isinstance(t, _Flatten):
            out = db.concat(bags)
        elif isinstance(t, (_Reshuffle, _GroupAlsoByWindow)) or (
                isinstance(t, beam.WindowInto) and isinstance(t.get_windowing(None).windowfn, GlobalWindows)):
            out = bags[0]  # identities here: one bag, grouped already, global window only
        else:
            raise NotImplementedError(f"DaskRunner: no translation for {node.full_label} "
                                      f"({type(t).__module__}.{type(t).__name__})")
        outputs = list(node.outputs.items())
        if not outputs:
            self.sinks.append(out)
        for tag, pcoll in outputs:
            self.bags[pcoll] = out.map_partitions(_with_tag, tag) if type(t) is beam.ParDo else out

    def _pardo(self, node: AppliedPTransform, bag):
        import dask

        t = node.transform
        args, kwargs = t.raw_side_inputs
        views, values = [], []
        for si in node.side_inputs:
            views.append((type(si), si._view_options()))
            values.append(dask.delayed(_concat)(*self.bags[si.pvalue].to_delayed(optimize_graph=False)))
        pairs = bag.map_partitions(_run_bundle, node.full_label, t.fn, list(args), dict(kwargs), views, *values)
        self.metric_bags.append(pairs.map_partitions(_with_tag, _METRICS))
        return pairs

    def leaves(self) -> list:
        """Bags nobody consumes (sinks' last steps and unused outputs): computing them runs the whole graph."""
        return [b for pc, b in self.bags.items() if pc not in self.consumed] + self.sinks


def _key(kv: tuple) -> Any:
    return kv[0]


def _flat_groups(groups: Iterable) -> list:
    return [(k, [wv.value if isinstance(wv, WindowedValue) else wv for _, wv in kvs]) for k, kvs in groups]


def _count(items: Iterable) -> list:
    return [sum(1 for _ in items)]


class _Counters(MetricResults):
    def __init__(self, totals: dict[MetricKey, int]):
        self._totals = totals

    def query(self, filter=None) -> dict:  # noqa: A002 - Beam's signature
        found = [MetricResult(k, v, v) for k, v in self._totals.items() if self.matches(filter, k)]
        return {self.COUNTERS: found, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: [], self.HISTOGRAMS: []}


class DaskResult(PipelineResult):
    """Waits for every leaf, sums the counters, closes the client (and the cluster it may have started)."""

    def __init__(self, client, futures: list, metrics_future):
        super().__init__(PipelineState.RUNNING)
        self._client, self._futures, self._metrics_future = client, futures, metrics_future
        self._counters: dict[MetricKey, int] = {}

    def wait_until_finish(self, duration=None) -> str:
        if self._state != PipelineState.RUNNING:
            return self._state
        try:
            self._client.gather(self._futures)
            for per_bundle in self._metrics_future.result():
                for step, namespace, name, value in per_bundle:
                    key = MetricKey(step, MetricName(namespace, name))
                    self._counters[key] = self._counters.get(key, 0) + value
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._client.close()
        return self._state

    def cancel(self) -> str:
        self._client.cancel(self._futures)
        self._client.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> MetricResults:
        return _Counters(dict(self._counters))


class DaskRunner(BeamDaskRunner):
    """Beam's DaskRunner options (--dask_client_address, --dask_npartitions, ...) with the translation above."""

    def run_pipeline(self, pipeline, options) -> DaskResult:
        import dask.bag as db
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        pipeline.replace_all(dask_overrides())
        builder = _BagBuilder(bag_kwargs)
        pipeline.visit(builder)
        client = ddist.Client(**dask_options)
        drains = [leaf.map_partitions(_count) for leaf in builder.leaves()]
        metrics = db.concat(builder.metric_bags) if builder.metric_bags else db.from_sequence([[]])
        futures = client.compute([*drains, metrics])
        return DaskResult(client, futures[:-1], futures[-1])
