"""Version discovery, warmup and swap rules of serving.registry (no gRPC: polled by hand)."""

from __future__ import annotations

import logging
import shutil
import uuid

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from common import fs
from common.versions import COMPLETE_MARKER, scan_versions
from serving.registry import AVAILABLE, END, ModelRegistry
from serving.signatures import RequestError, decode_inputs
from serving.tensors import fill_proto
from serving.warmup import read_warmup, write_warmup
from test_serving_toy import save_toy


@pytest.fixture(scope="module")
def toy_versions(tmp_path_factory, spec):
    """Two good versions, built once and copied into each test's base (saving is the slow part)."""
    src = tmp_path_factory.mktemp("toys")
    save_toy(src, 1, seed=1, spec=spec)
    save_toy(src, 2, seed=2, spec=spec)
    return src


def test_scan_ignores_temporary_and_incomplete_folders(tmp_path, toy_versions):
    shutil.copytree(toy_versions / "1", tmp_path / "1")
    shutil.copytree(toy_versions / "2", tmp_path / ".tmp-abc")
    (tmp_path / "7").mkdir()  # no saved_model.pb yet
    (tmp_path / "notes").mkdir()
    assert list(scan_versions(tmp_path)) == [1]
    assert scan_versions(tmp_path / "absent") == {}


def test_unpublished_version_folders_are_never_loaded(tmp_path, toy_versions, caplog):
    """A version copied file by file onto an object store is visible before it is whole: a folder without the
    completion marker, or without saved_model.pb, is skipped (not loaded, not a failed load), reported once."""
    shutil.copytree(toy_versions / "1", tmp_path / "1")
    (tmp_path / "1" / COMPLETE_MARKER).unlink()  # every file there but the marker: the copy is still running
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / COMPLETE_MARKER).write_text("")  # a marker without the model
    reg = ModelRegistry(tmp_path, "m")
    with caplog.at_level(logging.INFO, logger="rocketctr.serving"):
        reg.poll_once()
        reg.poll_once()
    assert reg.available_versions == [] and reg.states("m") == []
    skipped = [r.fields for r in caplog.records if r.getMessage().startswith("version folder not published")]
    assert sorted((f["version"], tuple(f["missing"])) for f in skipped) == [(1, (COMPLETE_MARKER,)),
                                                                           (3, ("saved_model.pb",))]
    (tmp_path / "1" / COMPLETE_MARKER).write_text("")  # the publisher's last write
    reg.poll_once()
    assert reg.available_versions == [1] and 'outcome="failed"' not in reg.metrics.render()


def test_a_version_published_on_ram_loads_and_serves(spec):
    """ram:// has no atomic folder rename (like gs://): save_toy publishes through common.versions, and the
    registry polls the URL base, loads and warms up the version."""
    base = f"ram://registry-{uuid.uuid4().hex}/models"
    try:
        save_toy(base, 4, seed=4, spec=spec)
        reg = ModelRegistry(base, "m")
        reg.poll_once()
        assert reg.available_versions == [4]
        req = read_warmup(fs.join(base, "4"))[0][0]
        out = reg.get("m").runner(req.model_spec.signature_name).run(decode_inputs(req.inputs))
        assert np.all(np.isfinite(out["ctr"]))
    finally:
        fs.rmtree(fs.parent(base))


def test_latest_n_policy_swap_and_unload(tmp_path, toy_versions, caplog):
    shutil.copytree(toy_versions / "1", tmp_path / "1")
    reg = ModelRegistry(tmp_path, "m", num_versions=2)
    with caplog.at_level(logging.INFO, logger="rocketctr.serving"):
        reg.poll_once()
    assert reg.available_versions == [1]
    loaded = [r for r in caplog.records if r.getMessage() == "version available"]
    assert loaded and loaded[0].fields["warmup_requests"] == len(read_warmup(tmp_path / "1")[0]) > 0
    shutil.copytree(toy_versions / "2", tmp_path / "2")
    reg.poll_once()
    assert reg.available_versions == [1, 2]
    assert reg.get("m").version == 2 and reg.get("m", 1).version == 1
    shutil.rmtree(tmp_path / "1")
    reg.poll_once()
    assert reg.available_versions == [2]
    assert [(s.version, s.state) for s in reg.states("m")] == [(2, AVAILABLE), (1, END)]
    with pytest.raises(RequestError) as e:
        reg.get("m", 1)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RequestError) as e:
        reg.get("other")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_failed_warmup_fails_the_load_and_keeps_the_old_version(tmp_path, toy_versions, caplog):
    shutil.copytree(toy_versions / "1", tmp_path / "1")
    shutil.copytree(toy_versions / "2", tmp_path / "2")
    bad = predict_pb2.PredictRequest()
    bad.model_spec.signature_name = "predict_raw"
    fill_proto(bad.inputs["ad_id"], np.array([b"x"], dtype=object))  # every other input missing
    write_warmup(tmp_path / "2", [bad])
    reg = ModelRegistry(tmp_path, "m", load_retries=2)
    with caplog.at_level(logging.ERROR, logger="rocketctr.serving"):
        reg.poll_once()
        reg.poll_once()
        reg.poll_once()  # retries exhausted: no third attempt
    assert reg.available_versions == [1]
    st = {s.version: s for s in reg.states("m")}
    assert st[2].state == END and "missing input" in st[2].error_message
    assert st[2].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    attempts = [r.fields["attempt"] for r in caplog.records if r.getMessage().startswith("version failed")]
    assert attempts == [1, 2]
    assert reg.metrics.render().count('outcome="failed"} 2') == 1


def test_fast_call_path_equals_the_public_signature_call(toy_versions):
    import tensorflow as tf

    from serving.signatures import decode_inputs, load_servable

    s = load_servable(toy_versions / "1", 1)
    reqs, _ = read_warmup(toy_versions / "1")
    assert {r.model_spec.signature_name for r in reqs} == set(s.runners)
    for r in reqs:
        runner = s.runner(r.model_spec.signature_name)
        assert runner._flat  # the restored function exposes the flat entry point this server relies on
        x = decode_inputs(r.inputs)
        public = runner._fn(**{k: tf.constant(v) for k, v in x.items()})
        fast = runner.run(x)
        for k in ("ctr", "logit"):
            np.testing.assert_array_equal(fast[k], public[k].numpy())
