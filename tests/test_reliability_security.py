"""Security defaults: loopback-only binding (checked on the live socket), message size limits, and no unsafe
deserialisation (pickle / eval / exec / yaml.load) anywhere in the shipped code."""

from __future__ import annotations

import ast
import ipaddress
import socket
import sys
from pathlib import Path

import feature_specs
import grpc
import numpy as np
import pytest

from serving.server import serve
from serving.tensors import from_numpy
from test_serving_toy import save_toy

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("feature_specs", "pipeline", "models", "serving", "rocketctr")


def _listening(port: int) -> list[str]:
    """Local addresses LISTENing on `port`, from /proc/net/tcp{,6} (what the kernel actually bound)."""
    out = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            addr, p = cols[1].split(":")
            if cols[3] == "0A" and int(p, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(addr)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word little endian
                out.append(socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw))
    return out


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("sec_models")
    save_toy(base, 1, seed=1, spec=feature_specs.load_spec("synthetic"))
    return base


def test_server_and_metrics_bind_loopback_by_default(toy_base):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("/proc/net/tcp is needed to read the bound address")
    with serve(toy_base, "ctr", port=0, metrics_port=0) as h:
        assert h.host == "127.0.0.1"
        grpc_addrs, metrics_addrs = _listening(h.port), _listening(h.metrics_port)
    assert grpc_addrs and all(_loopback(a) for a in grpc_addrs), grpc_addrs  # gRPC may use ::ffff:127.0.0.1
    assert metrics_addrs and all(_loopback(a) for a in metrics_addrs), metrics_addrs


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_cli_defaults_are_loopback_and_bounded_messages():
    import argparse

    from rocketctr.commands import serve as serve_cmd

    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    args = p.parse_args(["--model-base", "x", "--model-name", "ctr"])
    assert args.host == "127.0.0.1"
    assert 0 < args.max_message_mb <= 64


def test_message_limit_is_enforced_and_the_server_survives(toy_base):
    from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    with serve(toy_base, "ctr", port=0, max_message_mb=1) as h:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(h.target))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "ctr"
        req.inputs["examples"].CopyFrom(from_numpy(np.asarray([b"x" * 4096] * 400, dtype=object)))  # ~1.6 MB
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status_req = get_model_status_pb2.GetModelStatusRequest()
        status_req.model_spec.name = "ctr"
        st = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(h.target)).GetModelStatus(
            status_req, timeout=10)
        assert st.model_version_status[0].state == 30  # AVAILABLE


# ---- source scan -----------------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in UNSAFE_CALLS:
                found.append(f"{where} {f.id}(...)")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if f.value.id == "yaml" and f.attr in ("load", "load_all", "unsafe_load", "full_load"):
                    found.append(f"{where} yaml.{f.attr}(...) (use yaml.safe_load)")
                if f.value.id in UNSAFE_MODULES:
                    found.append(f"{where} {f.value.id}.{f.attr}(...)")
                if f.value.id in ("np", "numpy") and f.attr == "load" and any(
                        k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                        for k in node.keywords):
                    found.append(f"{where} np.load(allow_pickle=...)")
            for k in node.keywords:
                if k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True:
                    found.append(f"{where} subprocess with shell=True")
    return found


def test_no_unsafe_deserialisation_or_dynamic_code_in_the_shipped_code():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 30
    bad = [v for f in files for v in _violations(f)]
    assert not bad, "unsafe calls on possibly untrusted input:\n" + "\n".join(bad)


def test_the_scanner_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The scan above can fail: each pattern, planted in a file, is found."""
    sample = tmp_path / "planted.py"
    sample.write_text("import pickle\nimport yaml\nimport numpy as np\nimport subprocess\n"
                      "yaml.load(s)\neval('1')\npickle.loads(b'')\nnp.load('f', allow_pickle=True)\n"
                      "subprocess.run('x', shell=True)\nyaml.safe_load(s)\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _violations(sample)
    assert len(found) == 6, found
    assert sum("yaml." in v for v in found) == 1  # yaml.safe_load is fine
