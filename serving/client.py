"""PredictClient: raw feature rows -> a TF Serving PredictRequest -> numpy scores, over gRPC or REST.

Uses only the stock tensorflow-serving-api stubs (gRPC) or TF Serving's REST JSON (serving/rest_client.py), so
it talks to our server and to the real tensorflow/serving binary alike. Requests are built from the feature spec when given (dtypes and shapes
from feature_specs.derive.serving_input_specs, missing numerics -> the spec default as in the records,
sequences truncated to max_length and padded with ""), else from the server's own SignatureDefs
(GetModelMetadata), so a client needs nothing but the target and the model name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from feature_specs import derive, packed
from feature_specs.schema import FeatureSpec
from serving.rest_client import RestTransport
from serving.tensors import fill_proto, to_numpy

PROTOCOLS = ("grpc", "rest")


@dataclass(frozen=True)
class _Col:
    """How one signature input is built: string or float, rank 1 or 2, batch-1 (user side) or not."""

    name: str
    is_string: bool
    rank: int
    batch1: bool
    default: float | None = None
    delimiter: str = "|"
    max_length: int = 0


class PredictClient:
    """A PredictionService / ModelService client for one model. `tls`: False, True (system roots) or a CA file.
    `protocol`: "grpc" (target = the gRPC port) or "rest" (target = the REST port); same results, same errors
    (REST failures raise serving.rest_client.RestError, which has grpc.RpcError's code() and details())."""

    def __init__(self, target: str, model_name: str, spec: FeatureSpec | None = None,
                 tls: bool | str | Path = False, timeout: float = 10.0, max_message_mb: float = 64.0,
                 version: int | None = None, protocol: str = "grpc"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.channel = self.rest = None
        if protocol == "rest":
            self.rest = RestTransport(target, model_name, version, timeout, tls)
        else:
            opts = [("grpc.max_receive_message_length", int(max_message_mb * 2**20)),
                    ("grpc.max_send_message_length", int(max_message_mb * 2**20))]
            if tls:
                root = None if tls is True else Path(tls).read_bytes()
                self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options=opts)
            else:
                self.channel = grpc.insecure_channel(target, options=opts)
            self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
            self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.model_name, self.spec, self.timeout, self.version = model_name, spec, timeout, version
        self._layouts: dict[str, dict[str, _Col]] = {}

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()
        else:
            self.channel.close()

    def __enter__(self) -> "PredictClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- scoring -----------------------------------------------------------------------------------
    def predict(self, inputs: Mapping[str, np.ndarray], signature: str = "serving_default",
                output: str = "ctr", binary: tuple[str, ...] = ()) -> np.ndarray:
        """Send ready tensors (numpy) to a signature; return one output. `binary`: string inputs REST must send
        base64-encoded (gRPC sends bytes as they are)."""
        if self.rest is not None:
            return self.rest.predict(inputs, signature, output, binary)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.model_name
        req.model_spec.signature_name = signature
        if self.version is not None:
            req.model_spec.version.value = self.version
        for k, v in inputs.items():
            fill_proto(req.inputs[k], v)
        req.output_filter.append(output)
        resp = self.predict_stub.Predict(req, timeout=self.timeout)
        return to_numpy(resp.outputs[output])

    def predict_examples(self, examples: Sequence[bytes], output: str = "ctr") -> np.ndarray:
        """Serialized tf.train.Examples (the eval records' layout) through serving_default."""
        return self.predict({"examples": np.asarray(list(examples), dtype=object)}, "serving_default", output,
                            binary=("examples",))

    def predict_raw(self, features, output: str = "ctr") -> np.ndarray:
        """Rows of raw features (dict of columns or a DataFrame) through predict_raw."""
        cols = _columns(features)
        layout = self.layout("predict_raw")
        return self.predict({k: _build(c, _need(cols, k)) for k, c in layout.items()}, "predict_raw", output)

    def score_candidates(self, user: Mapping, items, output: str = "ctr") -> np.ndarray:
        """One user/context (a dict of scalars / one sequence) against N candidate items."""
        cols = _columns(items)
        inputs = {}
        for k, c in self.layout("score_candidates").items():
            inputs[k] = _build(c, [_need(user, k)]) if c.batch1 else _build(c, _need(cols, k))
        return self.predict(inputs, "score_candidates", output)

    def score_packed(self, user: Mapping, items, output: str = "ctr",
                     layout: tuple[packed.PackedInput, ...] | None = None) -> np.ndarray:
        """score_candidates' arguments and scores through score_packed (one tensor per side and dtype: the lean
        path). The layout comes from `layout` (e.g. packed.layout_from_dict(rocketctr.json["packed"])) or the
        spec; the columns are built exactly as for score_candidates, then packed."""
        if layout is None:
            if self.spec is None:
                raise ValueError("score_packed needs the packed layout: pass spec= to the client, or layout= "
                                 "(feature_specs.packed.layout_from_dict of the export's rocketctr.json 'packed')")
            layout = packed.packed_layout(self.spec)
        cols, cells = _columns(items), self.layout("score_candidates")
        names = [(p.group, c.feature) for p in layout for c in p.columns]
        unknown = [f for _, f in names if f not in cells]
        if unknown:
            raise ValueError(f"the packed layout names feature(s) {unknown} that score_candidates does not take")
        user_x = {f: _build(cells[f], [_need(user, f)]) for g, f in names if g == "user"}
        item_x = {f: _build(cells[f], _need(cols, f)) for g, f in names if g == "item"}
        return self.predict(packed.pack(layout, user_x, item_x), packed.SIGNATURE, output)

    # ---- model service ------------------------------------------------------------------------------
    def metadata(self) -> dict:
        """signature name -> SignatureDef (the server's GetModelMetadata, unpacked)."""
        if self.rest is not None:
            return self.rest.metadata()
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = self.model_name
        if self.version is not None:
            req.model_spec.version.value = self.version
        resp = self.predict_stub.GetModelMetadata(req, timeout=self.timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig_map)
        return dict(sig_map.signature_def)

    def status(self) -> list[dict]:
        """[{version, state, error_code, error_message}] newest first (ModelService.GetModelStatus)."""
        if self.rest is not None:
            resp = self.rest.status()
        else:
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = self.model_name
            resp = self.model_stub.GetModelStatus(req, timeout=self.timeout)
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": s.version, "state": names(s.state), "error_code": s.status.error_code,
                 "error_message": s.status.error_message} for s in resp.model_version_status]

    def layout(self, signature: str) -> dict[str, _Col]:
        if signature not in self._layouts:
            self._layouts[signature] = _spec_layout(self.spec, signature) if self.spec is not None \
                else _metadata_layout(self.metadata(), signature)
        return self._layouts[signature]


def _spec_layout(spec: FeatureSpec, signature: str) -> dict[str, _Col]:
    batch1 = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1)) \
        if signature == "score_candidates" else set()
    out = {}
    for k, ts in derive.serving_input_specs(spec).items():
        f = spec.feature(k)
        out[k] = _Col(k, ts.dtype.name == "string", ts.shape.rank, k in batch1,
                      f.default if f.kind == "numeric" else None, f.delimiter, f.max_length)
    return out


def _metadata_layout(sig_defs: dict, signature: str) -> dict[str, _Col]:
    if signature not in sig_defs:
        raise ValueError(f"the server has no signature {signature!r} (has {sorted(sig_defs)})")
    out = {}
    for k, t in sig_defs[signature].inputs.items():
        dims = [d.size for d in t.tensor_shape.dim]
        out[k] = _Col(k, t.dtype == types_pb2.DT_STRING, len(dims), bool(dims) and dims[0] == 1)
    return out


def _columns(rows) -> Mapping:
    """A DataFrame or a dict of columns -> column name -> list of values."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        return {c: rows[c].tolist() for c in rows.columns}
    return rows


def _need(cols: Mapping, k: str):
    if k not in cols:
        raise ValueError(f"feature {k!r} is missing from the request rows (have {sorted(cols)})")
    return cols[k]


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _token(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # a pandas int column with gaps becomes float: 3.0 must match the vocabulary's "3"
    return str(v).encode("utf-8")


def _fast(c: _Col, a: np.ndarray) -> np.ndarray | None:
    """Columns that are already model-ready numpy arrays pass through without a per-value Python loop
    (the hot path when scoring hundreds of candidates); anything else takes the checked slow path."""
    if not c.is_string and a.ndim == 1 and a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
        nan = np.isnan(a)
        if nan.any():
            if c.default is None:
                return None  # the slow path raises the error naming the feature and row
            a = np.where(nan, np.float32(c.default), a)
        return a
    if c.is_string and a.ndim == c.rank and a.dtype == object and all(type(v) is bytes for v in a.flat):
        return a[:, -c.max_length:] if c.rank == 2 and c.max_length else a
    return None


def _build(c: _Col, values) -> np.ndarray:
    if isinstance(values, np.ndarray):
        fast = _fast(c, values)
        if fast is not None:
            return fast
    values = list(values)
    if not c.is_string:
        out = np.empty(len(values), dtype=np.float32)
        for i, v in enumerate(values):
            if _missing(v) or v == "":
                if c.default is None:
                    raise ValueError(f"numeric feature {c.name!r} is missing at row {i} and no spec gives a "
                                     f"default (pass spec=...)")
                v = c.default
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"numeric feature {c.name!r} row {i}: {v!r} is not a number") from None
        return out
    if c.rank == 1:
        return np.asarray([b"" if _missing(v) else _token(v) for v in values], dtype=object)
    seqs = []
    for v in values:
        if _missing(v) or (isinstance(v, str) and v == ""):
            toks = []
        elif isinstance(v, (str, bytes)):
            s = v.decode() if isinstance(v, bytes) else v
            toks = [t for t in s.split(c.delimiter) if t]
        else:
            toks = [_token(t) for t in v if not _missing(t) and t != ""]
        toks = [_token(t) for t in toks]
        seqs.append(toks[-c.max_length:] if c.max_length else toks)
    width = max([1, *map(len, seqs)])
    out = np.full((len(seqs), width), b"", dtype=object)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out
