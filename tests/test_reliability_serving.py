"""Reliability of `rocketctr serve` on a REAL exported rocket light net: hostile requests, concurrent load,
a hot swap to a newly exported version under load, and a broken version folder under load.

The run is trained for a few steps (models.train.train on tests/fixtures_data.py rows) and exported with
serving.export.export_run, so the served graph is the production one (lookups, OOV buckets, normalisation),
not the toy. Clients are threads with serving.client.PredictClient over 127.0.0.1. The load tests assert zero
errors and version monotonicity and PRINT p50/p99 and the swap time (timings are figures, not assertions).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from feature_specs import derive
from serving.client import PredictClient
from common.versions import next_version
from serving.export import export_run, model_inputs_of, read_eval_examples
from serving.server import serve
from serving.tensors import from_numpy, to_numpy
from tests.train_helpers import fast_config, fixture_data

MODEL = "ctr"
CANDIDATES = 300
CLIENTS = 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from models.train import train

    root = tmp_path_factory.mktemp("reliability_run")
    data = fixture_data(root / "data", rows=600)
    return train(fast_config("rocket", max_steps=6, epochs=1), data, root / "run", verbose=0)


@pytest.fixture(scope="module")
def base(run_dir, tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("reliability_models")
    export_run(run_dir, b, warmup_rows=4)
    return b


@pytest.fixture(scope="module")
def server(base):
    with serve(base, MODEL, port=0, poll_seconds=0.1, max_message_mb=4, workers=8) as handle:
        yield handle


@pytest.fixture(scope="module")
def raw(run_dir, spec) -> dict[str, np.ndarray]:
    """predict_raw inputs of 20 real eval rows."""
    from models.run import read_run_config

    _, data_dir, _ = read_run_config(run_dir)
    return model_inputs_of(spec, read_eval_examples(data_dir, 20))


def _user_keys(spec) -> set[str]:
    return set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))


def candidates(spec, raw: dict[str, np.ndarray], n: int = CANDIDATES, user_row: int = 0) -> dict[str, np.ndarray]:
    """score_candidates inputs: one real user/context (batch 1) against n real items (tiled)."""
    users = _user_keys(spec)
    reps = -(-n // len(raw["ad_id"]))
    return {k: (v[user_row:user_row + 1] if k in users else np.concatenate([v] * reps)[:n]) for k, v in raw.items()}


def _request(inputs: dict, signature: str) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v if isinstance(v, TensorProto) else from_numpy(v))
    return req


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(server.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch)
    ch.close()


def _code(stub, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(req, timeout=30)
    return e.value.code(), e.value.details()


# ---- malformed requests against the real model -----------------------------------------------------------

def test_malformed_requests_are_invalid_argument_and_the_server_survives(server, stub, spec, raw):
    bad = grpc.StatusCode.INVALID_ARGUMENT
    cand = candidates(spec, raw, 50)
    seq = next(f.name for f in spec.by_kind("sequence"))
    num = next(f.name for f in spec.by_kind("numeric") if f.side == "item")
    cat = next(f.name for f in spec.by_kind("categorical") if f.side == "item")
    cases = {
        "missing input": ({k: v for k, v in raw.items() if k != cat}, "predict_raw"),
        "unexpected input": ({**raw, "zzz": np.zeros(20, np.float32)}, "predict_raw"),
        "float64 numeric": ({**raw, num: raw[num].astype(np.float64)}, "predict_raw"),
        "int64 numeric": ({**raw, num: raw[num].astype(np.int64)}, "predict_raw"),
        "string numeric": ({**raw, num: raw[num].astype(str).astype(object)}, "predict_raw"),
        "numeric categorical": ({**raw, cat: np.arange(20, dtype=np.float32)}, "predict_raw"),
        "rank-2 categorical": ({**raw, cat: raw[cat].reshape(20, 1)}, "predict_raw"),
        "rank-1 sequence": ({**raw, seq: raw[seq][:, 0]}, "predict_raw"),
        "scalar numeric": ({**raw, num: np.float32(1.0)}, "predict_raw"),
        "mismatched batch": ({**raw, cat: raw[cat][:7]}, "predict_raw"),
        "NaN numeric": ({**raw, num: np.where(np.arange(20) == 3, np.nan, raw[num]).astype(np.float32)},
                        "predict_raw"),
        "+inf numeric": ({**raw, num: np.full(20, np.inf, np.float32)}, "predict_raw"),
        "-inf numeric": ({**raw, num: np.full(20, -np.inf, np.float32)}, "predict_raw"),
        "NaN candidate numeric": ({**cand, num: np.full(50, np.nan, np.float32)}, "score_candidates"),
        "user side with 2 rows": ({**cand, "user_id": np.asarray([b"u1", b"u2"], object)}, "score_candidates"),
        "empty batch": ({k: v[:0] for k, v in raw.items()}, "predict_raw"),
        "empty candidate batch": ({k: (v if k in _user_keys(spec) else v[:0]) for k, v in cand.items()},
                                  "score_candidates"),
        "empty examples": ({"examples": np.zeros(0, object)}, "serving_default"),
        "garbage examples": ({"examples": np.asarray([b"\x00\xffnot a proto"] * 3, object)}, "serving_default"),
        "unknown signature": (raw, "nope"),
    }
    for name, (inputs, sig) in cases.items():
        code, msg = _code(stub, _request(inputs, sig))
        assert code == bad, f"{name}: {code} {msg}"
        assert msg, name
    # a tiny request declaring a huge shape must not make the server allocate it
    huge = from_numpy(raw[num][:1])
    huge.tensor_shape.dim[0].size = 2 ** 31
    huge.tensor_content = b""
    huge.float_val.append(1.0)
    code, msg = _code(stub, _request({**raw, num: huge}, "predict_raw"))
    assert code == bad and repr(num) in msg, msg
    huge_str = from_numpy(raw[cat][:1])
    huge_str.tensor_shape.dim[0].size = 2 ** 31
    code, msg = _code(stub, _request({**raw, cat: huge_str}, "predict_raw"))
    assert code == bad and repr(cat) in msg, msg
    # oversized message (> --max-message-mb 4): refused by gRPC before decoding
    big = candidates(spec, raw, 60_000)
    assert _code(stub, _request(big, "score_candidates"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # still healthy
    ok = stub.Predict(_request(cand, "score_candidates"), timeout=30)
    assert to_numpy(ok.outputs["ctr"]).shape == (50,)


def _mutations(rng: np.random.Generator, spec, raw: dict, examples: list[bytes]):
    """Seeded random client mistakes (and some legal oddities), one (name, inputs, signature) at a time."""
    cand = candidates(spec, raw, 30)
    sigs = {"predict_raw": raw, "score_candidates": cand,
            "serving_default": {"examples": np.asarray(examples, dtype=object)}}

    def junk(n: int) -> list[bytes]:
        return [rng.bytes(int(rng.integers(0, 64))) for _ in range(n)]

    while True:
        sig = ["predict_raw", "score_candidates", "serving_default"][int(rng.integers(3))]
        inputs = dict(sigs[sig])
        key = list(inputs)[int(rng.integers(len(inputs)))]
        v = inputs[key]
        kind = int(rng.integers(12))
        if kind == 0:
            inputs.pop(key)
        elif kind == 1:
            inputs["extra_" + str(int(rng.integers(99)))] = np.zeros(len(v), np.float32)
        elif kind == 2:
            inputs[key] = v.astype(np.float64) if v.dtype.kind == "f" else np.arange(len(v), dtype=np.int64)
        elif kind == 3:
            inputs[key] = v.reshape(len(v), 1, *v.shape[1:]) if v.ndim else v
        elif kind == 4:
            inputs[key] = v[0] if len(v) else v
        elif kind == 5:
            inputs[key] = v[: int(rng.integers(0, max(1, len(v))))]
        elif kind == 6:
            inputs = {k: a[:0] for k, a in inputs.items()}
        elif kind == 7 and v.dtype.kind == "f":
            a = v.copy()
            a.flat[int(rng.integers(a.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
            inputs[key] = a
        elif kind == 8 and v.dtype.kind == "O":
            a = v.copy()
            a.flat[int(rng.integers(a.size))] = b"\xff\xfe" + rng.bytes(5)  # not UTF-8
            inputs[key] = a
        elif kind == 9:  # random bytes where serialized tf.Examples belong
            inputs = {"examples": np.asarray(junk(int(rng.integers(1, 40))), dtype=object)}
            sig = "serving_default"
        elif kind == 10:  # valid examples cut short or with bytes flipped
            out = []
            for e in examples[: int(rng.integers(1, len(examples) + 1))]:
                b = bytearray(e)
                if rng.random() < 0.5:
                    b = b[: int(rng.integers(0, len(b)))]
                else:
                    for _ in range(int(rng.integers(1, 4))):
                        b[int(rng.integers(len(b)))] = int(rng.integers(256))
                out.append(bytes(b))
            inputs = {"examples": np.asarray(out, dtype=object)}
            sig = "serving_default"
        else:
            inputs[key] = v.astype(str).astype(object) if v.dtype.kind == "f" else np.zeros(len(v), np.float32)
        yield f"{sig}/{kind}/{key}", inputs, sig


def test_fuzzed_requests_never_reach_internal_and_the_server_keeps_serving(server, stub, spec, raw, run_dir):
    """600 seeded mutations of valid requests over the three signatures: every answer is OK with finite scores
    or INVALID_ARGUMENT with a message; never INTERNAL / UNKNOWN; valid requests still work afterwards."""
    from models.run import read_run_config

    _, data_dir, _ = read_run_config(run_dir)
    examples = read_eval_examples(data_dir, 20)
    rng = np.random.default_rng(1234)
    codes: dict = {}
    for _, (name, inputs, sig) in zip(range(600), _mutations(rng, spec, raw, examples)):
        try:
            resp = stub.Predict(_request(inputs, sig), timeout=30)
        except grpc.RpcError as e:
            codes[e.code()] = codes.get(e.code(), 0) + 1
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details(), (name, e.code(), e.details())
            continue
        codes["OK"] = codes.get("OK", 0) + 1
        assert np.isfinite(to_numpy(resp.outputs["ctr"])).all(), name
    print(f"fuzz: {codes}")
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 300
    ok = stub.Predict(_request(candidates(spec, raw, 50), "score_candidates"), timeout=30)
    assert to_numpy(ok.outputs["ctr"]).shape == (50,)


def test_unknown_and_odd_values_get_finite_scores(stub, spec, raw):
    """Unknown categories go to the OOV buckets; empty strings and odd bytes are values, not errors."""
    cat_feats = [f.name for f in spec.by_kind("categorical")]
    seq_feats = [f.name for f in spec.by_kind("sequence")]
    odd = dict(raw)
    tokens = [b"never-seen-before", b"", b"\xff\xfe\x00binary", "\u00e9t\u00e9 \U0001f680".encode(), b"x" * 10_000]
    for k in cat_feats:
        odd[k] = np.asarray([tokens[i % len(tokens)] for i in range(20)], dtype=object)
    for k in seq_feats:
        odd[k] = np.full((20, 3), b"unseen-token", dtype=object)
    for k in (f.name for f in spec.by_kind("numeric")):
        odd[k] = np.asarray([0.0, -1.0, 1e6, -1e6, 3e38, -3e38, 1e-38, 7.0] * 2 + [0.0] * 4, dtype=np.float32)
    for sig, inputs in (("predict_raw", odd), ("score_candidates", candidates(spec, odd, 20))):
        r = stub.Predict(_request(inputs, sig), timeout=30)
        ctr = to_numpy(r.outputs["ctr"])
        assert ctr.shape == (20,) and np.isfinite(ctr).all() and ((ctr >= 0) & (ctr <= 1)).all(), (sig, ctr)
    known = stub.Predict(_request(raw, "predict_raw"), timeout=30)
    assert np.isfinite(to_numpy(known.outputs["logit"])).all()


def test_a_large_batch_within_the_message_limit_is_scored(stub, spec, raw):
    ctr = to_numpy(stub.Predict(_request(candidates(spec, raw, 5000), "score_candidates"), timeout=60)
                   .outputs["ctr"])
    assert ctr.shape == (5000,) and np.isfinite(ctr).all()


# ---- load ----------------------------------------------------------------------------------------------

class LoadRun:
    """CLIENTS threads x n score_candidates requests of CANDIDATES items; every outcome is recorded."""

    def __init__(self, target: str, spec, raw: dict[str, np.ndarray], n: int, until=None, after: int = 0):
        """n requests per client; with `until`, also keep going until until() is true, then `after` more."""
        self.target, self.spec, self.n, self.until, self.after = target, spec, n, until, after
        users = _user_keys(spec)
        self.jobs = []
        for c in range(CLIENTS):
            x = candidates(spec, raw, CANDIDATES, user_row=c % len(raw["ad_id"]))
            self.jobs.append(({k: v[0] for k, v in x.items() if k in users},
                              {k: v for k, v in x.items() if k not in users}))
        self.records: list[list[tuple[float, float, int]]] = [[] for _ in range(CLIENTS)]  # (start, end, version)
        self.errors: list[str] = []
        self.nonfinite = 0
        self.done = [0] * CLIENTS
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(CLIENTS)]

    def _client(self, c: int) -> None:
        user, items = self.jobs[c]
        with PredictClient(self.target, MODEL, spec=self.spec, timeout=60) as client:
            layout = client.layout("score_candidates")
            i, stop_at = 0, None
            while True:
                if stop_at is None and (self.until is None or self.until()):
                    stop_at = i + (self.after if self.until is not None else 0)
                if i >= self.n and stop_at is not None and i >= stop_at:
                    break
                t0 = time.perf_counter()
                try:
                    inputs = {k: client_build(col, [user[k]] if col.batch1 else items[k])
                              for k, col in layout.items()}
                    resp = client.predict_stub.Predict(_request(inputs, "score_candidates"), timeout=60)
                    ctr = to_numpy(resp.outputs["ctr"])
                    if ctr.shape != (CANDIDATES,) or not np.isfinite(ctr).all():
                        self.nonfinite += 1
                    self.records[c].append((t0, time.perf_counter(), resp.model_spec.version.value))
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    self.errors.append(f"client {c} request {i}: {type(e).__name__}: {e}")
                i += 1
                self.done[c] = i

    def start(self) -> "LoadRun":
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), f"load did not finish in {timeout} s: {self.done}"

    def latencies_ms(self) -> np.ndarray:
        return np.asarray([(e - s) * 1e3 for rec in self.records for s, e, _ in rec])

    def report(self, label: str) -> str:
        lat = self.latencies_ms()
        return (f"{label}: {len(lat)} requests x {CANDIDATES} candidates from {CLIENTS} clients, "
                f"{len(self.errors)} errors, p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms")


def client_build(col, values):
    from serving.client import _build

    return _build(col, values)


def _check_clean(load: LoadRun) -> None:
    assert not load.errors, f"{len(load.errors)} failed requests, first: {load.errors[:3]}"
    assert load.nonfinite == 0


def test_concurrent_clients_small(server, spec, raw):
    load = LoadRun(server.target, spec, raw, n=15).start()
    load.join(timeout=240)
    _check_clean(load)
    assert len(load.latencies_ms()) == CLIENTS * 15
    print("\n" + load.report("load (fast tier)"))


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _swap_under_load(server, base: Path, run_dir: Path, spec, raw, n: int, after: int) -> str:
    """Export a new version while CLIENTS clients hammer the server; return the printed figures."""
    current = max(server.registry.available_versions)
    new = next_version(base)  # past any refused (broken) folder
    seen_new = threading.Event()
    visible: dict[str, float] = {}

    def watch():  # when the renamed version folder becomes visible on disk
        if _wait(lambda: (base / str(new) / "saved_model.pb").exists(), 300):
            visible["t"] = time.perf_counter()

    def switched() -> bool:
        if not seen_new.is_set() and any(r and r[-1][2] == new for r in load.records):
            seen_new.set()
        return seen_new.is_set()

    load = LoadRun(server.target, spec, raw, n=n, until=switched, after=after)
    load.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert _wait(lambda: min(load.done) >= 3, 120), "clients did not start"
    export_run(run_dir, base, version=new, warmup_rows=4)
    assert _wait(switched, 120), f"version {new} was not served within 120 s"
    load.join(timeout=1200)
    watcher.join(5)
    _check_clean(load)
    records = [r for rec in load.records for r in rec]
    versions = {v for _, _, v in records}
    assert versions == {current, new}, versions
    first_new_end = min(e for _, e, v in records if v == new)
    first_new_start = min(s for s, _, v in records if v == new)
    late_old = [(s, v) for s, _, v in records if s > first_new_end and v != new]
    assert not late_old, f"{len(late_old)} requests sent after the first {new} response saw an old version"
    for rec in load.records:  # per client: once on the new version, never back
        vs = [v for _, _, v in rec]
        if new in vs:
            assert all(v == new for v in vs[vs.index(new):])
    assert "t" in visible
    swap_ms = (first_new_end - visible["t"]) * 1e3
    assert first_new_start > visible["t"] - 1.0
    old_count = sum(v == current for _, _, v in records)
    return (load.report(f"swap {current}->{new} under load") +
            f"; {old_count} served by v{current}, {len(records) - old_count} by v{new}; "
            f"swap time (folder visible -> first v{new} response) {swap_ms:.0f} ms")


def test_hot_swap_under_light_load(server, base, run_dir, spec, raw):
    print("\n" + _swap_under_load(server, base, run_dir, spec, raw, n=10, after=10))


def test_broken_version_is_refused_while_the_old_one_serves_under_load(server, base, spec, raw):
    serving_version = max(server.registry.available_versions)
    broken = serving_version + 1
    staging = base.parent / f"staging-{broken}"
    shutil.copytree(base / str(serving_version), staging)
    shutil.rmtree(staging / "variables")
    load = LoadRun(server.target, spec, raw, n=10).start()
    assert _wait(lambda: min(load.done) >= 2, 120)
    (staging).rename(base / str(broken))
    with PredictClient(server.target, MODEL, timeout=10) as client:
        assert _wait(lambda: any(s["version"] == broken and s["state"] == "END" and s["error_message"]
                                 for s in client.status()), 60), client.status()
    load.join(timeout=600)
    _check_clean(load)
    assert {v for rec in load.records for _, _, v in rec} == {serving_version}
    assert server.registry.available_versions == [serving_version]


@pytest.mark.slow
def test_concurrent_clients_1000_requests_each_with_a_hot_swap(server, base, run_dir, spec, raw):
    load = LoadRun(server.target, spec, raw, n=1000).start()
    load.join(timeout=1800)
    _check_clean(load)
    assert len(load.latencies_ms()) == CLIENTS * 1000
    print("\n" + load.report("load (slow tier)"))
    print(_swap_under_load(server, base, run_dir, spec, raw, n=300, after=100))
