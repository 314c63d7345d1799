"""The whole flow on a non-local file system: simulate -> preprocess -> train -> export -> serve (version polling)
-> eval, with the raw logs, the preprocessing output, the run, the model base and the eval output all under
`gs://` on a local GCS emulator (tests/gcs_emulator.py). None of the flow's outputs lands on the local disk; only
the simulator's raw CSVs (uploaded first) and the test's certificates are written there.

What this covers, and what it does not:
- Beam side (preprocess and eval jobs: reading logs and shards, writing shards, vocabularies, stats, manifest,
  eval metrics and report) goes through Beam's GCS I/O (google-cloud-storage, `STORAGE_EMULATOR_HOST`).
- TensorFlow side (shard listing and reading in training, run config, checkpoints, TensorBoard, metrics.json,
  tower SavedModels, the export's staging and object-store publish, the server's version polling and loading,
  the eval job's SavedModel loading) goes through TensorFlow's own compiled-in `gs://` file system (libcurl). It
  cannot be pointed at an emulator by configuration (the endpoints are constants in tsl's gcs_file_system.cc),
  so the test reaches it through a TLS-terminating proxy on 127.0.0.1 (`HTTPS_PROXY` + `CURL_CA_BUNDLE`): the
  real client code and wire protocol, a stand-in server.
- Not covered: real GCS semantics the emulator does not reproduce (consistency and latency of listings, IAM,
  retries on 429/503, resumable uploads of large objects split into several chunks); credentials (the test
  uses `GOOGLE_AUTH_TOKEN_FOR_TESTING` and anonymous Beam access); multi-process Beam workers (the jobs run on
  the in-process FnApiRunner: the environment pointing at the emulator is the test process's); `hdfs://` and
  `s3://` (no TensorFlow plugin is installed for either); the stock TF Serving binary (its loading rule is
  checked on the publish order in tests/test_common_fs.py).
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common import fs, versions
from gcs_emulator import gcs_emulator
from train_helpers import fast_config

IN_PROCESS = ["--runner=FnApiRunner"]

pytestmark = pytest.mark.slow


def _served_version(stub, request) -> int:
    return stub.Predict(request, timeout=30).model_spec.version.value


def test_simulate_preprocess_train_export_serve_eval_on_gcs(tmp_path):
    from pipeline.evaluate.eval_job import evaluate
    from pipeline.preprocess.preprocess_job import preprocess
    from pipeline.simulator.click_logs import simulate
    from models.train import train
    from serving.export import export_run, read_eval_examples
    from serving.server import serve
    from serving.tensors import fill_proto, to_numpy

    sim = simulate(2000, tmp_path / "raw", seed=7)
    with gcs_emulator(tmp_path / "gcs") as gcs:
        for f in sim.click_files:
            fs.copy(f, gcs.url("raw", f.name))
        data, run_dir, base, eval_dir = (gcs.url("prep"), gcs.url("runs", "rocket"), gcs.url("models", "ctr"),
                                         gcs.url("eval"))

        preprocess("synthetic", gcs.url("raw", "clicks-*.csv"), data, beam_args=IN_PROCESS)
        manifest = fs.read_json(fs.join(data, "manifest.json"))
        assert manifest["rows"]["written"]["train"] > 0 and fs.glob(fs.join(data, "eval-*.tfrecord.gz"))
        assert manifest["inputs"]["files"] == [gcs.url("raw", f.name) for f in sim.click_files]

        run = train(fast_config("rocket", epochs=1, validation_fraction=0.2, checkpoint_every_steps=1000,
                                log_every_steps=1000), data, run_dir, verbose=0)
        assert run == run_dir  # a URL comes back as a string, not a pathlib.Path
        metrics = fs.read_json(fs.join(run, "metrics.json"))
        assert metrics["steps"] > 0 and metrics["eval"]["light"]["rows"] > 0
        assert fs.read_json(fs.join(run, "config.json"))["data_dir"] == data
        for part in ("spec.yaml", "towers/light/saved_model.pb", "towers/booster/saved_model.pb"):
            assert fs.exists(fs.join(run, part)), part
        assert fs.glob(fs.join(run, "checkpoints", "final", "ckpt-*.index"))
        assert fs.glob(fs.join(run, "tb", "train", "events.*"))

        v1 = export_run(run, base, warmup_rows=4)
        assert v1 == fs.join(base, "1") and versions.is_complete(v1)
        assert fs.listdir(base) == ["1"]  # the staging prefix is gone

        examples = read_eval_examples(data, 5)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ctr"
        fill_proto(request.inputs["examples"], np.asarray(examples, dtype=object))
        with serve(base, "ctr", port=0, poll_seconds=0.2) as handle:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(handle.target))
            first = stub.Predict(request, timeout=30)
            assert first.model_spec.version.value == 1
            export_run(run, base, warmup_rows=2)  # published while the server polls the bucket
            deadline = time.monotonic() + 120
            while _served_version(stub, request) != 2:
                assert time.monotonic() < deadline, "version 2 was not served within 120 s"
                time.sleep(0.2)
            np.testing.assert_allclose(to_numpy(stub.Predict(request, timeout=30).outputs["ctr"]),
                                       to_numpy(first.outputs["ctr"]), atol=1e-6)  # same run, same weights

        out = evaluate(base, data, eval_dir, beam_args=IN_PROCESS)  # the model base: its newest published version
        assert out == eval_dir
        doc = fs.read_json(fs.join(eval_dir, "metrics.json"))
        assert doc["data_dir"] == data and fs.exists(fs.join(eval_dir, "report.md"))
        (model,) = doc["models"].values()
        assert model["path"] == fs.join(base, "2") and 0.0 < model["metrics"]["auc"] < 1.0
        assert not [p for p in fs.walk_files(eval_dir) if "_parts" in p]
