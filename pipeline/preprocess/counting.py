"""Per-bundle pre-aggregated counting: a dict in the DoFn, flushed in finish_bundle, summed by CombinePerKey.

Emitting one (key, 1) per element would push every token through the shuffle; a bundle-local dict cuts that
to one element per distinct key per bundle. The dict is flushed early when it grows past `max_keys`, so
memory stays flat whatever the input size.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

_GLOBAL = (GlobalWindow(),)
_END = GlobalWindow().max_timestamp()


def global_value(value) -> WindowedValue:
    """A finish_bundle output in the global window (GlobalWindows.windowed_value costs ~20 us; this ~1)."""
    return WindowedValue(value, _END, _GLOBAL)


class CountKeysPerBundle(beam.DoFn):
    """element -> keys_fn(element) keys; emits (key, count) once per bundle (or when the dict is full)."""

    def __init__(self, keys_fn: Callable[[object], Iterable[Hashable]], max_keys: int = 200_000):
        self._keys_fn = keys_fn
        self._max_keys = max_keys
        self._counts: dict = {}

    def start_bundle(self):
        self._counts = {}

    def process(self, element):
        counts = self._counts
        for key in self._keys_fn(element):
            counts[key] = counts.get(key, 0) + 1
        if len(counts) > self._max_keys:
            items, self._counts = list(counts.items()), {}
            yield from items

    def finish_bundle(self):
        items, self._counts = list(self._counts.items()), {}
        for kv in items:
            yield global_value(kv)


class CountKeys(beam.PTransform):
    """(key, total count) for every key the elements produce: bundle-local pre-aggregation + CombinePerKey."""

    def __init__(self, keys_fn: Callable[[object], Iterable[Hashable]], max_keys: int = 200_000):
        super().__init__()
        self._keys_fn = keys_fn
        self._max_keys = max_keys

    def expand(self, pcoll):
        return (pcoll
                | "PreAggregate" >> beam.ParDo(CountKeysPerBundle(self._keys_fn, self._max_keys))
                | "Sum" >> beam.CombinePerKey(sum))


def constant_key(key: Hashable) -> Callable[[object], tuple]:
    """keys_fn counting every element under one key (picklable, unlike a lambda in some runners)."""
    return _ConstantKey(key)


class _ConstantKey:
    def __init__(self, key: Hashable):
        self._keys = (key,)

    def __call__(self, _element) -> tuple:
        return self._keys
