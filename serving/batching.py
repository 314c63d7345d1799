"""Server-side batching (TF Serving's `--enable_batching`): concurrent Predict requests of one signature merged
into one call, the outputs split back per request.

What merges: requests for the same loaded version and signature, with the same output_filter and the same
non-batch input shapes, when the signature is row-wise: every input and every output has the batch dimension
first (serving_default, predict_raw). Their inputs are concatenated along axis 0, one call runs, and each request
gets its own rows back. score_candidates and score_packed are not merged: their user side is fixed at batch 1,
so one call scores exactly one user, and two users' requests cannot share a call; they run unbatched, as without
batching (counted as `unbatchable`).

The scheduler is TF's SharedBatchScheduler in miniature. Per queue (one per merge key) the newest batch is open;
a request that does not fit its remaining rows closes it and opens the next one. `max_enqueued_batches` bounds
the batches waiting per queue (the one running does not count); a request beyond it is refused at once with
UNAVAILABLE, TF's message and code, instead of waiting unboundedly. `num_batch_threads` threads run the oldest
batch that is ready: full, or open for `batch_timeout_micros` (0: as soon as a thread is free, so batches form
only while every thread is busy). A request larger than `max_batch_size` rows runs on its own (TF Serving would
refuse it; splitting it would give the same scores, so running it whole loses nothing).

A request is validated on its own before it joins a batch, so a malformed one is refused alone. If the merged call
still fails (e.g. one serialized tf.Example that does not parse, or a NaN inside one), each request of the batch
is run on its own, so every request gets exactly the answer it would get without batching.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from serving.batching_config import BatchingParameters
from serving.signatures import RequestError, Servable, SignatureRunner

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"  # TF's words (UNAVAILABLE)


def batchable(sig: meta_graph_pb2.SignatureDef) -> bool:
    """Row-wise signatures only: every input and output has rank >= 1 and an open (-1) first dimension."""
    tensors = [*sig.inputs.values(), *sig.outputs.values()]
    return bool(sig.inputs) and bool(sig.outputs) and all(not t.tensor_shape.unknown_rank and t.tensor_shape.dim
                                 and t.tensor_shape.dim[0].size == -1 for t in tensors)


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    opened: float
    tasks: list[_Task] = field(default_factory=list)
    rows: int = 0
    closed: bool = False


@dataclass
class _Queue:
    runner: SignatureRunner
    output_filter: tuple[str, ...]
    batches: deque[_Batch] = field(default_factory=deque)  # oldest first; only the last one may be open


class Batcher:
    """The merge queues and the batch threads; `run` blocks its caller (a gRPC or REST worker) until its rows
    are scored. `clock` is injectable (tests move time by hand, then call wake())."""

    def __init__(self, params: BatchingParameters, log: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.params, self.clock = params, clock
        self.log = log or logging.getLogger("rocketctr.serving")
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._batchable: weakref.WeakKeyDictionary[SignatureRunner, bool] = weakref.WeakKeyDictionary()
        self._stats = dict.fromkeys(("requests", "batches", "merged_requests", "rows", "largest_batch_requests",
                                     "queue_full", "unbatchable", "oversized", "fallback_batches"), 0)

    # ---- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        for i in range(self.params.threads):
            t = threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, run every queued batch, end the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self.log.info("batching stopped", extra={"fields": {"batching": self.stats()}})

    def wake(self) -> None:
        """Make the batch threads look at the clock again (for an injected clock that was moved by hand)."""
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return dict(self._stats)

    # ---- the request side -------------------------------------------------------------------------------
    def run(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray],
            output_filter=()) -> dict[str, np.ndarray]:
        """The signature's outputs for these inputs, exactly as SignatureRunner.run would return them."""
        runner = servable.runner(signature)
        ok = self._batchable.get(runner)
        if ok is None:  # once per loaded signature
            ok = batchable(servable.signature_defs[runner.name])
            with self._cond:
                self._batchable[runner] = ok
        if not ok:
            self._count("unbatchable")
            return runner.run(inputs, output_filter)
        runner.validate(inputs)  # a malformed request is refused alone, before it can join a batch
        rows = int(next(iter(inputs.values())).shape[0])
        if rows > self.params.max_batch_size:
            self._count("oversized")
            return runner.run(inputs, output_filter)
        filt = tuple(output_filter)
        key = (runner, filt, tuple((k, a.shape[1:], "str" if a.dtype.kind in "OSU" else a.dtype.str)
                                   for k, a in sorted(inputs.items())))
        task = _Task(inputs, rows)
        self._enqueue(key, runner, filt, task)
        return task.future.result()

    def _enqueue(self, key: tuple, runner: SignatureRunner, filt: tuple[str, ...], task: _Task) -> None:
        p = self.params
        with self._cond:
            if self._stopping:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = _Queue(runner, filt)
            tail = q.batches[-1] if q.batches and not q.batches[-1].closed else None
            if tail is None or tail.rows + task.rows > p.max_batch_size:
                if len(q.batches) >= p.max_enqueued_batches:  # refused before anything changes (TF's order)
                    self._stats["queue_full"] += 1
                    raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                       f"{QUEUE_FULL} ({len(q.batches)} batches of up to {p.max_batch_size} rows "
                                       f"waiting for signature {runner.name!r}; max_enqueued_batches="
                                       f"{p.max_enqueued_batches})")
                if tail is not None:
                    tail.closed = True  # full enough: it runs as soon as a thread is free
                tail = _Batch(self.clock())
                q.batches.append(tail)
            tail.tasks.append(task)
            tail.rows += task.rows
            tail.closed = tail.rows >= p.max_batch_size
            self._stats["requests"] += 1
            self._cond.notify()

    def _count(self, name: str) -> None:
        with self._cond:
            self._stats[name] += 1

    # ---- the batch threads ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    picked = self._take_ready()
                    if picked is not None:
                        break
                    if self._stopping and not self._queues:
                        return
                    self._cond.wait(self._wait_seconds())
            self._execute(*picked)

    def _take_ready(self) -> tuple[_Queue, _Batch] | None:
        """The oldest batch that is full, has waited its timeout, or must go because the server stops."""
        now, timeout = self.clock(), self.params.timeout_seconds
        best = None
        for key, q in self._queues.items():
            b = q.batches[0]
            ready = b.closed or self._stopping or now - b.opened >= timeout
            if ready and (best is None or b.opened < best[2].opened):
                best = (key, q, b)
        if best is None:
            return None
        key, q, b = best
        q.batches.popleft()
        b.closed = True
        if not q.batches:
            del self._queues[key]  # no empty queue keeps an unloaded version alive
        return q, b

    def _wait_seconds(self) -> float | None:
        if not self._queues:
            return None
        oldest = min(q.batches[0].opened for q in self._queues.values())
        return min(1.0, max(0.0, oldest + self.params.timeout_seconds - self.clock()))

    def _execute(self, q: _Queue, batch: _Batch) -> None:
        tasks = batch.tasks
        with self._cond:
            s = self._stats
            s["batches"] += 1
            s["rows"] += batch.rows
            s["largest_batch_requests"] = max(s["largest_batch_requests"], len(tasks))
            s["merged_requests"] += len(tasks) if len(tasks) > 1 else 0
        if len(tasks) > 1:
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs}
                out = q.runner.run(merged, q.output_filter)
                if any(v.ndim == 0 or v.shape[0] != batch.rows for v in out.values()):
                    raise ValueError(f"signature {q.runner.name!r}: an output is not one row per input row")
                ends = np.cumsum([t.rows for t in tasks])[:-1]
                parts = {k: np.split(v, ends) for k, v in out.items()}
                answers = [{k: p[i] for k, p in parts.items()} for i in range(len(tasks))]
            except Exception as e:  # noqa: BLE001 - one request's fault must not decide the others' answers
                self._count("fallback_batches")
                self.log.info("merged call failed; running its requests one by one",
                              extra={"fields": {"signature": q.runner.name, "requests": len(tasks),
                                                "error": getattr(e, "message", None) or f"{type(e).__name__}: {e}"}})
            else:
                for t, answer in zip(tasks, answers):
                    t.future.set_result(answer)
                return
        for t in tasks:
            try:
                t.future.set_result(q.runner.run(t.inputs, q.output_filter))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request, which reports it
                t.future.set_exception(e)
