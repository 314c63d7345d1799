"""TF Serving's REST JSON mapping: request bodies -> numpy inputs, outputs and protos -> JSON bodies.

The shapes follow tensorflow_serving/g3doc/api_rest.md: a predict body holds `signature_name` (optional) and
exactly one of `instances` (row format: a list with one entry per row, objects keyed by input name when the
signature has several inputs) or `inputs` (columnar: an object of whole tensors, or the tensor itself for a
one-input signature). Strings are JSON strings (sent as UTF-8) or {"b64": ...} for binary values such as
serialized tf.Examples. Numbers must be numbers: a string where a float is expected is refused (no silent
coercion). Row requests are answered with {"predictions": ...}, columnar ones with {"outputs": ...}; with one
output tensor its name is omitted. Every refusal is an INVALID_ARGUMENT (HTTP 400) naming the input.

Each input is converted once, with one numpy call for numeric tensors; the numpy arrays then take exactly the
path a gRPC request takes (SignatureRunner.run), so validation errors and scores are the same.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.signatures import InputSpec, SignatureRunner, invalid

B64 = "b64"
BYTES_SUFFIX = "_bytes"  # TF Serving's rule: string outputs named *_bytes are sent as {"b64": ...}
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "c": "iufc"}
_KIND_WORDS = {"U": "string", "O": "mixed or nested", "b": "boolean", "f": "decimal", "i": "integer", "u": "integer"}


def loads(body: bytes) -> dict:
    """One parse of the request body; NaN / Infinity tokens are accepted, as TF Serving does."""
    if not body:
        raise invalid("JSON Parse error: the request body is empty")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"the request body must be a JSON object, got {type(doc).__name__}")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"'signature_name' must be a string, got {json.dumps(name)[:80]}")
    return name or "serving_default"


def predict_inputs(doc: dict, runner: SignatureRunner) -> tuple[dict[str, np.ndarray], bool]:
    """(numpy inputs, row format?) from a predict body, for `runner`'s signature."""
    if ("instances" in doc) == ("inputs" in doc):
        raise invalid("a predict request needs exactly one of 'instances' (row format) or 'inputs' (columnar "
                      "format)")
    specs = runner.inputs
    row = "instances" in doc
    columns = _row_columns(doc["instances"], specs, runner.name) if row else \
        _columnar(doc["inputs"], specs, runner.name)
    # an input the signature does not have is left to runner.validate, which names it (as for gRPC)
    inputs = {k: to_numpy(k, v, specs[k]) if k in specs else np.empty(0, dtype=object) for k, v in columns.items()}
    if row:
        n = len(doc["instances"])
        fixed = sorted(k for k, s in specs.items() if s.shape and s.shape[0] == 1)
        if n > 1 and fixed:
            raise invalid(f"signature {runner.name!r} takes {', '.join(map(repr, fixed))} at batch 1, but the row "
                          f"format ('instances') stacks every input to {n} rows; use the columnar format ('inputs')")
    return inputs, row


def _is_b64(v) -> bool:
    return type(v) is dict and len(v) == 1 and type(v.get(B64)) is str


def _only_input(specs: dict[str, InputSpec], what: str, sig: str) -> str:
    if len(specs) != 1:
        raise invalid(f"{what}, but signature {sig!r} takes {len(specs)} inputs ({', '.join(sorted(specs))}); "
                      f"key them by input name")
    return next(iter(specs))


def _columnar(value, specs: dict[str, InputSpec], sig: str) -> dict:
    if type(value) is dict and not _is_b64(value):
        return value
    return {_only_input(specs, "'inputs' is a plain value or list", sig): value}


def _row_columns(instances, specs: dict[str, InputSpec], sig: str) -> dict:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list (one entry per row)")
    first = instances[0]
    if type(first) is not dict or _is_b64(first):
        name = _only_input(specs, "'instances' is a plain list", sig)
        return {name: instances}
    keys = first.keys()
    for i, inst in enumerate(instances):
        if type(inst) is not dict or _is_b64(inst) or inst.keys() != keys:
            got = sorted(inst) if type(inst) is dict else type(inst).__name__
            raise invalid(f"'instances'[{i}] has {got} but 'instances'[0] has {sorted(keys)}; every instance "
                          f"must be an object with the same input names")
    return {k: [inst[k] for inst in instances] for k in keys}


@functools.lru_cache(maxsize=None)
def _np_dtype(enum: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)


def to_numpy(name: str, value, spec: InputSpec) -> np.ndarray:
    """One JSON tensor (a value or nested lists) -> numpy in the input's dtype; refuses other JSON types."""
    if spec.dtype == types_pb2.DT_STRING:
        return _strings(name, value, spec)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise invalid(f"input {name!r}: nested lists of uneven length; expected {spec.describe()}") from None
    want = _np_dtype(spec.dtype)
    if arr.dtype.kind not in _ACCEPTED_KINDS.get(want.kind, want.kind):
        got = _KIND_WORDS.get(arr.dtype.kind, str(arr.dtype))
        raise invalid(f"input {name!r} has JSON {got} values; expected {spec.describe()}")
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        if arr.min() < info.min or arr.max() > info.max:
            raise invalid(f"input {name!r}: a value is outside the range of {want} ({info.min}..{info.max})")
    return arr.astype(want, copy=False)


def _strings(name: str, value, spec: InputSpec) -> np.ndarray:
    """Strings stay str objects (TensorFlow encodes them as UTF-8, as TF Serving does); b64 objects decode to
    bytes. Anything else (numbers, null, uneven nesting) is refused with its position."""
    arr = np.array(value, dtype=object)
    leaves = arr.reshape(-1).tolist()
    if all(type(v) is str for v in leaves):
        return arr
    out = np.empty(len(leaves), dtype=object)
    for i, v in enumerate(leaves):
        if type(v) is str:
            out[i] = v.encode("utf-8", "surrogatepass")
        elif _is_b64(v):
            try:
                out[i] = base64.b64decode(v[B64], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"input {name!r}{_at(arr, i)}: {v[B64][:40]!r} is not valid base64") from None
        else:
            what = "a list nested unevenly" if isinstance(v, list) else f"JSON {_json_type(v)}"
            raise invalid(f"input {name!r}{_at(arr, i)}: {what}; expected a string or {{\"b64\": ...}} "
                          f"({spec.describe()})")
    return out.reshape(arr.shape)


def _at(arr: np.ndarray, i: int) -> str:
    return f" at {list(map(int, np.unravel_index(i, arr.shape)))}" if arr.ndim else ""


def _json_type(v) -> str:
    return {bool: "boolean", int: "number", float: "number", type(None): "null", dict: "object"}.get(type(v),
                                                                                                  type(v).__name__)


# ---- responses -------------------------------------------------------------------------------------------
def _jsonable(name: str, a: np.ndarray):
    if a.dtype.kind not in "OSU":
        return a.tolist()
    binary = name.endswith(BYTES_SUFFIX)
    return np.vectorize(lambda b: _string_out(b, binary), otypes=[object])(a).tolist()


def _string_out(b, binary: bool):
    if isinstance(b, str):
        return b
    if not binary:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {B64: base64.b64encode(b).decode("ascii")}


def _row_texts(name: str, a: np.ndarray) -> list[str]:
    """The JSON text of each row of an output (rank >= 1). Finite float vectors, the hot path, are written with
    printf's %g at the digits that round-trip the value exactly (9 for float32, as TF Serving's max_digits10
    fallback): about twice as fast as float repr or a dict through json.dumps."""
    if a.ndim == 1 and a.dtype.kind == "f" and np.isfinite(a).all():
        fmt = "%.9g" if a.dtype.itemsize <= 4 else "%.17g"
        return [fmt % v for v in a.tolist()]
    return [json.dumps(v, separators=(",", ":")) for v in _jsonable(name, a)]


def _tensor_text(name: str, a: np.ndarray) -> str:
    if a.ndim == 0:
        return json.dumps(_jsonable(name, a))
    return "[" + ",".join(_row_texts(name, a)) + "]"


def predict_body(outputs: dict[str, np.ndarray], row: bool) -> bytes:
    """{"predictions": ...} (row format: one entry per row) or {"outputs": ...} (columnar); with a single output
    its name is left out. Written as text pieces, not through a dict of Python floats."""
    names = sorted(outputs)
    if not row:
        if len(names) == 1:
            return f'{{"outputs":{_tensor_text(names[0], outputs[names[0]])}}}'.encode()
        parts = ",".join(f"{json.dumps(k)}:{_tensor_text(k, outputs[k])}" for k in names)
        return f'{{"outputs":{{{parts}}}}}'.encode()
    batch = {k: (outputs[k].shape[0] if outputs[k].ndim else None) for k in names}
    if None in batch.values() or len(set(batch.values())) != 1:
        raise invalid(f"outputs {batch} do not share a batch dimension; use the columnar format ('inputs')")
    texts = [_row_texts(k, outputs[k]) for k in names]
    if len(names) == 1:
        rows = texts[0]
    else:
        template = "{" + ",".join(json.dumps(k).replace("%", "%%") + ":%s" for k in names) + "}"
        rows = [template % t for t in zip(*texts)]
    return ('{"predictions":[' + ",".join(rows) + "]}").encode()


def _dumps(v) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode()


def error_body(message: str) -> bytes:
    return _dumps({"error": message})


def status_body(resp: get_model_status_pb2.GetModelStatusResponse, error: str | None = None) -> bytes:
    """GetModelStatusResponse as TF Serving prints it (version as a string, state and error_code as names);
    with `error`, the same object also carries TF Serving's error key (a model with no AVAILABLE version)."""
    doc = json_format.MessageToDict(resp, always_print_fields_with_no_presence=True,
                                    preserving_proto_field_name=True)
    if error is not None:
        doc = {"error": error, **doc}
    return _dumps(doc)


def metadata_body(resp: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """{"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap>}}, TF Serving's layout."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    opts = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    return _dumps({"model_spec": json_format.MessageToDict(resp.model_spec, **opts),
                   "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)}})
