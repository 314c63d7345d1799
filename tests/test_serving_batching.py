"""Server-side batching (serving/batching.py, serving/batching_config.py): merged calls give every request exactly
its unbatched answer, the queue bound refuses with TF's UNAVAILABLE, the max wait is respected (an injected
clock moved by hand: no timing assertions), and `rocketctr serve --enable_batching` wires it into gRPC and REST.

The model is the toy export of test_serving_toy (real SavedModel, real SignatureRunner, real threads).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from rocketctr.commands import serve as serve_cmd
from serving.batching import QUEUE_FULL, Batcher
from serving.batching_config import BatchingParameters, load_batching_parameters, parse_batching_parameters
from serving.server import serve
from serving.signatures import RequestError, load_servable
from serving.tensors import from_numpy, to_numpy
from test_serving_toy import rows_to_examples, rows_to_inputs, save_toy, toy_rows

HOUR = 3_600_000_000  # a batch timeout no test run reaches by itself: time moves only when a test moves it


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def toy(tmp_path_factory, spec):
    base = tmp_path_factory.mktemp("batch_models")
    path = save_toy(base, 1, seed=7, spec=spec)
    return base, load_servable(path, 1)


def _examples(spec, n, seed):
    return {"examples": np.asarray(rows_to_examples(spec, toy_rows(spec, n, seed=seed)), dtype=object)}


def _raw(spec, n, seed, width=6):
    """predict_raw inputs with every sequence padded to `width` columns (as clients pad to max_length)."""
    x = rows_to_inputs(spec, toy_rows(spec, n, seed=seed))
    return {k: np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=b"") if v.ndim == 2 else v
            for k, v in x.items()}


def _until(cond, what: str, limit: float = 60.0) -> None:
    """Wait for a state change made by another thread (a hang guard, not a timing check)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def _batcher(clock=None, **params) -> Batcher:
    return Batcher(BatchingParameters(**params), clock=clock or FakeClock()).start()


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0)


# ---- parameters --------------------------------------------------------------------------------------------

def test_parameters_file_is_tf_serving_text_format(tmp_path):
    f = tmp_path / "batching.txt"
    f.write_text("# as for tensorflow_model_server --batching_parameters_file\n"
                 "max_batch_size { value: 1200 }\nbatch_timeout_micros: { value: 500 }\n"
                 "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 3 }\n"
                 "thread_pool_name { value: 'x' }\npad_variable_length_inputs: true\n")
    p = load_batching_parameters(f)
    assert (p.max_batch_size, p.batch_timeout_micros, p.max_enqueued_batches, p.threads) == (1200, 500, 4, 3)
    assert [i.split(" ")[0] for i in p.ignored] == ["thread_pool_name", "pad_variable_length_inputs"]
    assert load_batching_parameters(f, max_batch_size=64, num_batch_threads=None).max_batch_size == 64
    d = BatchingParameters()  # TF's SharedBatchScheduler defaults
    assert (d.max_batch_size, d.batch_timeout_micros, d.max_enqueued_batches) == (1000, 0, 10) and d.threads >= 1


@pytest.mark.parametrize("text, words", [
    ("max_batch_size { value: 0 }", ["max_batch_size", ">= 1", "0"]),
    ("batch_timeout_micros { value: -5 }", ["batch_timeout_micros", ">= 0"]),
    ("max_batch_sise { value: 3 }", ["1:1", "max_batch_sise"]),
    ("max_batch_size: 3", ["1:", "max_batch_size"]),  # the wrapper message is required, as in TF Serving
])
def test_bad_parameters_name_the_field(text, words):
    with pytest.raises(ValueError) as e:
        parse_batching_parameters(text, "b.txt")
    assert "b.txt" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_cli_batching_flags():
    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    base = ["--model-base", "m", "--model-name", "ctr"]
    assert serve_cmd.batching_of(p.parse_args(base)) is None  # off by default
    on = serve_cmd.batching_of(p.parse_args(base + ["--enable_batching", "--max-batch-size", "64",
                                                    "--num-batch-threads", "1"]))
    assert (on.max_batch_size, on.threads, on.max_enqueued_batches) == (64, 1, 10)
    with pytest.raises(ValueError, match="--max-batch-size given without --enable_batching"):
        serve_cmd.batching_of(p.parse_args(base + ["--max-batch-size", "64"]))


# ---- merging -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signature", ["serving_default", "predict_raw"])
def test_merged_results_equal_unbatched_per_request(toy, spec, signature):
    _, servable = toy
    runner = servable.runner(signature)
    make = _examples if signature == "serving_default" else _raw
    reqs = [make(spec, n, seed) for seed, n in enumerate((1, 3, 5, 2, 4, 1))]
    if signature == "predict_raw":  # another sequence width: merges only with its own kind
        reqs += [_raw(spec, 2, 20, width=7), _raw(spec, 3, 21, width=7)]
    clock = FakeClock()
    b = _batcher(clock, batch_timeout_micros=HOUR, max_batch_size=1000)
    try:
        with ThreadPoolExecutor(len(reqs)) as pool:
            futs = [pool.submit(b.run, servable, signature, x) for x in reqs]
            _until(lambda: b.stats()["requests"] == len(reqs), "every request to be queued")
            assert b.stats()["batches"] == 0  # nothing runs before the timeout or a full batch
            clock.now += HOUR / 1e6
            b.wake()
            for x, f in zip(reqs, futs):
                _assert_same(f.result(60), runner.run(x))
    finally:
        b.stop()
    s = b.stats()
    assert s["batches"] == (1 if signature == "serving_default" else 2)
    assert s["merged_requests"] == len(reqs) and s["largest_batch_requests"] == 6
    assert s["rows"] == sum(next(iter(x.values())).shape[0] for x in reqs)


def test_full_batch_runs_without_waiting_and_timeout_is_respected(toy, spec):
    _, servable = toy
    clock = FakeClock()
    b = _batcher(clock, batch_timeout_micros=1000, max_batch_size=4)
    try:
        with ThreadPoolExecutor(4) as pool:
            a = pool.submit(b.run, servable, "serving_default", _examples(spec, 1, 1))
            _until(lambda: b.stats()["requests"] == 1, "a to be queued")
            clock.now += 0.0009  # still inside a's 1 ms window: c joins a's batch
            c = pool.submit(b.run, servable, "serving_default", _examples(spec, 1, 2))
            _until(lambda: b.stats()["requests"] == 2, "c to be queued")
            assert not a.done() and not c.done()
            clock.now += 0.0001  # a's batch has now waited batch_timeout_micros
            b.wake()
            a.result(60), c.result(60)
            assert (b.stats()["batches"], b.stats()["largest_batch_requests"]) == (1, 2)
            # 3 + 1 rows fill max_batch_size = 4: that batch runs at once, the clock never moves
            d = pool.submit(b.run, servable, "serving_default", _examples(spec, 3, 3))
            e = pool.submit(b.run, servable, "serving_default", _examples(spec, 1, 4))
            d.result(60), e.result(60)
    finally:
        b.stop()
    assert b.stats()["batches"] == 2


def test_full_queue_is_unavailable_with_tf_message(toy, spec):
    _, servable = toy
    clock = FakeClock()
    b = _batcher(clock, batch_timeout_micros=HOUR, max_batch_size=10, max_enqueued_batches=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = _examples(spec, 6, 1)
            a = pool.submit(b.run, servable, "serving_default", first)
            _until(lambda: b.stats()["requests"] == 1, "a to be queued")
            with pytest.raises(RequestError) as e:  # 6 + 6 rows need a second batch; only one may wait
                b.run(servable, "serving_default", _examples(spec, 6, 2))
            assert e.value.code == grpc.StatusCode.UNAVAILABLE and QUEUE_FULL in e.value.message
            assert "max_enqueued_batches=1" in e.value.message
            clock.now += HOUR / 1e6
            b.wake()
            _assert_same(a.result(60), servable.runner("serving_default").run(first))
    finally:
        b.stop()
    assert b.stats()["queue_full"] == 1


def test_a_bad_request_fails_alone(toy, spec):
    _, servable = toy
    runner = servable.runner("serving_default")
    good = _examples(spec, 3, 5)
    bad = {"examples": np.asarray([b"\xff\xfe not an Example"], dtype=object)}
    clock = FakeClock()
    b = _batcher(clock, batch_timeout_micros=HOUR)
    try:
        with ThreadPoolExecutor(2) as pool:
            fg = pool.submit(b.run, servable, "serving_default", good)
            fb = pool.submit(b.run, servable, "serving_default", bad)
            _until(lambda: b.stats()["requests"] == 2, "both to be queued")
            clock.now += HOUR / 1e6
            b.wake()
            _assert_same(fg.result(60), runner.run(good))
            with pytest.raises(RequestError) as e:
                fb.result(60)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(RequestError, match="missing input"):  # shape/name checks refuse before queueing
            b.run(servable, "serving_default", {"rows": good["examples"]})
    finally:
        b.stop()
    s = b.stats()
    assert (s["batches"], s["fallback_batches"], s["requests"]) == (1, 1, 2)


def test_candidate_signatures_and_oversized_requests_run_unbatched(toy, spec):
    _, servable = toy
    side = {f.name: f.side for f in spec.features}
    x = _raw(spec, 5, 6)
    cand = {k: (v[:1] if side[k] != "item" else v) for k, v in x.items()}
    b = _batcher(FakeClock(), batch_timeout_micros=HOUR, max_batch_size=4)
    try:  # the clock never moves: only a request that bypasses the queue can come back
        _assert_same(b.run(servable, "score_candidates", cand), servable.runner("score_candidates").run(cand))
        big = _examples(spec, 5, 8)
        _assert_same(b.run(servable, "serving_default", big, ["ctr"]),
                     servable.runner("serving_default").run(big, ["ctr"]))
    finally:
        b.stop()
    s = b.stats()
    assert (s["unbatchable"], s["oversized"], s["requests"], s["batches"]) == (1, 1, 0, 0)


def test_stop_runs_queued_batches_then_refuses(toy, spec):
    _, servable = toy
    b = _batcher(FakeClock(), batch_timeout_micros=HOUR)
    x = _examples(spec, 2, 9)
    with ThreadPoolExecutor(1) as pool:
        f = pool.submit(b.run, servable, "serving_default", x)
        _until(lambda: b.stats()["requests"] == 1, "the request to be queued")
        b.stop()
        _assert_same(f.result(60), servable.runner("serving_default").run(x))
    with pytest.raises(RequestError) as e:
        b.run(servable, "serving_default", x)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


# ---- through the server ------------------------------------------------------------------------------------

def test_server_batches_grpc_and_rest_together(toy, spec):
    base, servable = toy
    runner = servable.runner("serving_default")
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=HOUR, max_enqueued_batches=1,
                                num_batch_threads=1)
    with serve(base, "ctr", port=0, rest_port=0, workers=4, batching=params) as h:
        channel = grpc.insecure_channel(h.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def grpc_req(x):
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "ctr"
            req.inputs["examples"].CopyFrom(from_numpy(x["examples"]))
            return req

        def rest(x):
            body = json.dumps({"instances": [{"b64": base64.b64encode(e).decode()}
                                             for e in x["examples"]]}).encode()
            req = urllib.request.Request(f"http://{h.rest_target}/v1/models/ctr:predict", body)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        a, c = _examples(spec, 3, 11), _examples(spec, 4, 12)
        fa = stub.Predict.future(grpc_req(a), timeout=60)  # 3 of 8 rows: waits for company
        _until(lambda: h.batcher.stats()["requests"] == 1, "the gRPC request to be queued")
        with pytest.raises(grpc.RpcError) as e:  # 3 + 6 > 8: a second batch, and only one may wait
            stub.Predict(grpc_req(_examples(spec, 6, 13)), timeout=60)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and QUEUE_FULL in e.value.details()
        status, doc = rest(_examples(spec, 6, 13))
        assert status == 503 and QUEUE_FULL in doc["error"]
        with ThreadPoolExecutor(1) as pool:
            fc = pool.submit(rest, c)  # 3 + 4 rows: joins a's batch over REST
            _until(lambda: h.batcher.stats()["requests"] == 2, "the REST request to be queued")
            filler = _examples(spec, 1, 14)  # 3 + 4 + 1 = 8 rows: the batch is full and runs now
            ff = stub.Predict.future(grpc_req(filler), timeout=60)
            np.testing.assert_allclose(to_numpy(fa.result().outputs["ctr"]), runner.run(a)["ctr"], atol=1e-6)
            np.testing.assert_allclose(to_numpy(ff.result().outputs["ctr"]), runner.run(filler)["ctr"], atol=1e-6)
            status, doc = fc.result(60)
        assert status == 200
        np.testing.assert_allclose([p["ctr"] for p in doc["predictions"]], runner.run(c)["ctr"], atol=1e-6)
        s = h.batcher.stats()
        assert (s["batches"], s["largest_batch_requests"], s["queue_full"]) == (1, 3, 2)
        assert h.metrics.request_count(code="UNAVAILABLE") == 2
        channel.close()
