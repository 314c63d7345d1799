"""`rocketctr serve` as a process, `rocketctr score` on CSV/JSONL, and `rocketctr bench serve` (tiny run)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from rocketctr import cli
from serving.client import PredictClient
from serving.server import serve
from serving.server_process import ServerProcess
from test_serving_toy import rows_to_examples, save_toy, toy_rows


@pytest.fixture(scope="module")
def base(tmp_path_factory, spec):
    b = tmp_path_factory.mktemp("models")
    save_toy(b, 1, seed=4, spec=spec)
    return b


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


def test_score_over_rest(base, spec, tmp_path, capsys):
    rows = toy_rows(spec, 5, seed=6)
    with open(tmp_path / "rows.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    out = tmp_path / "scored.csv"
    with serve(base, "toy", port=0, rest_port=0) as h:
        assert cli.main(["score", "--protocol", "rest", "--target", h.rest_target, "--model-name", "toy",
                         "--input", str(tmp_path / "rows.jsonl"), "--spec", "synthetic", "--output", str(out)]) == 0
        np.testing.assert_allclose(pd.read_csv(out)["ctr"].to_numpy(), _want(base, spec, rows), atol=1e-6)
        assert cli.main(["score", "--protocol", "rest", "--target", h.rest_target, "--model-name", "nope",
                         "--input", str(tmp_path / "rows.jsonl")]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err


def test_serve_command_runs_until_sigterm(base, spec, tmp_path):
    """`rocketctr serve` as production runs it (serving.server_process): gRPC, REST, metrics and health on
    their own ports; SIGTERM is a clean exit."""
    log = tmp_path / "serve.log"
    server = ServerProcess(base, "toy", metrics=True, log_path=log, timeout=60,
                           args=["--poll-seconds", "0.5", "--intra-op-threads", "1", "--inter-op-threads", "1"])
    with server:  # ready = the gRPC health service says SERVING for the model
        rows = toy_rows(spec, 4, seed=5)
        for protocol, target in (("grpc", server.target), ("rest", server.rest_target)):
            with PredictClient(target, "toy", protocol=protocol, timeout=10) as client:
                assert client.status()[0]["state"] == "AVAILABLE"
                np.testing.assert_allclose(client.predict_examples(rows_to_examples(spec, rows)),
                                           _want(base, spec, rows), atol=1e-6)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            text = r.read().decode()
        assert 'method="Predict"' in text and 'method="REST.Predict"' in text
        assert server.stop() == 0  # SIGTERM
    logs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(d["msg"] == "serving" and d["target"] == server.target and d["rest_port"] == server.rest_port
               for d in logs)


def test_bench_serve_prints_a_table(base, capsys):
    from rocketctr.bench.serve_latency import main

    assert main(["--model-base", str(base), "--booster-base", str(base), "--requests", "5", "--warmup", "1",
                 "--sizes", "1,3", "--signatures", "score_candidates,score_packed,serving_default",
                 "--no-grpc"]) == 0
    out = capsys.readouterr().out
    assert "| light | score_candidates | 3 |" in out and "| booster | serving_default | 1 |" in out
    assert "| light | score_packed | 3 |" in out and "load (1 min)" in out  # the lean path beside the others
    assert "booster/light" in out and "parameters" in out and "in-process CPU ms" in out
    # the same export on both sides: every ratio is a ratio of like with like, so finite and positive
    ratios = [float(c.strip()[:-1]) for line in out.splitlines() if line.startswith("| score_candidates |")
              for c in line.split("|")[3:-1]]
    assert len(ratios) == 2 * 4 and all(r > 0 for r in ratios)
