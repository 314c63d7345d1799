"""`rocketctr serve` as a process, `rocketctr score` on CSV/JSONL, and `rocketctr bench serve` (tiny run)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import feature_specs
from rocketctr import cli
from serving.client import PredictClient
from serving.server import serve
from test_serving_toy import rows_to_examples, save_toy, toy_rows


@pytest.fixture(scope="module")
def spec():
    return feature_specs.load_spec("synthetic")


@pytest.fixture(scope="module")
def base(tmp_path_factory, spec):
    b = tmp_path_factory.mktemp("models")
    save_toy(b, 1, seed=4, spec=spec)
    return b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _want(base, spec, rows):
    m = tf.saved_model.load(str(base / "1"))
    return m.signatures["serving_default"](examples=tf.constant(rows_to_examples(spec, rows)))["ctr"].numpy()


def test_score_csv_and_jsonl(base, spec, tmp_path, capsys):
    rows = toy_rows(spec, 6, seed=5)
    want = _want(base, spec, rows)
    df = pd.DataFrame(rows)
    for f in spec.by_kind("sequence"):
        df[f.name] = ["|".join(v) for v in df[f.name]]
    df.insert(0, "req_id", range(6))  # not a feature: reported, not sent
    df.to_csv(tmp_path / "rows.csv", index=False)
    with open(tmp_path / "rows.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with serve(base, "toy", port=0) as h:
        out = tmp_path / "scored.csv"
        assert cli.main(["score", "--target", h.target, "--model-name", "toy", "--input", str(tmp_path / "rows.csv"),
                         "--spec", "synthetic", "--output", str(out)]) == 0
        assert "req_id" in capsys.readouterr().err
        np.testing.assert_allclose(pd.read_csv(out)["ctr"].to_numpy(), want, atol=1e-6)
        assert cli.main(["score", "--target", h.target, "--model-name", "toy",
                         "--input", str(tmp_path / "rows.jsonl")]) == 0  # layout from GetModelMetadata
        printed = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
        np.testing.assert_allclose(printed["ctr"].to_numpy(), want, atol=1e-6)
        same_user = [{**r, **{f.name: rows[0][f.name] for f in spec.features if f.side != "item"}} for r in rows]
        assert cli.main(["score", "--target", h.target, "--model-name", "toy", "--input", str(tmp_path / "rows.jsonl"),
                         "--signature", "score_candidates", "--output", str(out)]) == 0
        np.testing.assert_allclose(pd.read_csv(out)["ctr"].to_numpy(), _want(base, spec, same_user), atol=1e-6)
        assert cli.main(["score", "--target", h.target, "--model-name", "nope", "--input",
                         str(tmp_path / "rows.csv"), "--spec", "synthetic"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        df.drop(columns=["ad_id"]).to_csv(tmp_path / "bad.csv", index=False)
        assert cli.main(["score", "--target", h.target, "--model-name", "toy", "--input", str(tmp_path / "bad.csv"),
                         "--spec", "synthetic"]) == 1
        assert "'ad_id'" in capsys.readouterr().err


def test_serve_command_runs_until_sigterm(base):
    port, mport = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rocketctr.cli", "serve", "--model-base", str(base),
                             "--model-name", "toy", "--port", str(port), "--metrics-port", str(mport),
                             "--poll-seconds", "0.5", "--intra-op-threads", "1", "--inter-op-threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = PredictClient(f"127.0.0.1:{port}", "toy", timeout=2)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if client.status()[0]["state"] == "AVAILABLE":
                    break
            except Exception:
                assert time.monotonic() < deadline, "server not ready in 60 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics") as r:
            assert "rocketctr_requests_total" in r.read().decode()
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert any(d["msg"] == "serving" and d["target"] == f"127.0.0.1:{port}" for d in logs)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bench_serve_prints_a_table(base, capsys):
    from rocketctr.bench.serve_latency import main

    assert main(["--model-base", str(base), "--booster-base", str(base), "--requests", "5", "--warmup", "1",
                 "--sizes", "1,3", "--signatures", "score_candidates,serving_default", "--no-grpc"]) == 0
    out = capsys.readouterr().out
    assert "| light | score_candidates | 3 |" in out and "| booster | serving_default | 1 |" in out
    assert "booster/light" in out and "parameters" in out and "in-process CPU ms" in out
    # the same export on both sides: every ratio is a ratio of like with like, so finite and positive
    ratios = [float(c.strip()[:-1]) for line in out.splitlines() if line.startswith("| score_candidates |")
              for c in line.split("|")[3:-1]]
    assert len(ratios) == 2 * 4 and all(r > 0 for r in ratios)
