"""One loaded SavedModel version: its signatures, request validation, and the fast call path.

Every request is checked against the SignatureDef (the same contract TF Serving enforces) before it reaches
TensorFlow, so a bad request becomes an INVALID_ARGUMENT naming the input instead of an opaque op error
deep inside the graph, and a NaN never reaches a score. The call itself goes to the restored function's
inner atomic function with its captured variable and table handles resolved once at load (`_direct_entry`):
on a 300-candidate request the public keyword-argument path costs about as much again as the light net
(structure matching of ~40 inputs), and ConcreteFunction._call_flat re-resolves ~60 captured handles per call
(~0.15 ms measured on the light net). The flat entry and then the public path are the fallbacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from common import fs
from serving.tensors import TensorError, dtype_name, to_numpy

try:  # what tf.constant(array) ends in; calling it directly skips ~3 us of dispatch per input (~40 per request)
    from tensorflow.python.eager import context as _eager_context
    from tensorflow.python.framework.ops import EagerTensor as _EagerTensor
except ImportError:  # pragma: no cover - a TF without it: the public path
    _EagerTensor = None

INTERNAL_SIGNATURES = ("__saved_model_init_op",)
METADATA_FILE = "rocketctr.json"
ASSETS_EXTRA = "assets.extra"


class RequestError(Exception):
    """A request the server refuses; carries the gRPC status code the client receives."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: int  # types_pb2 enum
    shape: tuple[int, ...]  # -1 = any

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)}{list(self.shape)}".replace("-1", "None")


class SignatureRunner:
    """Validates numpy inputs against one SignatureDef and runs its concrete function."""

    def __init__(self, name: str, sig: meta_graph_pb2.SignatureDef, fn):
        self.name = name
        self.inputs = {k: InputSpec(k, v.dtype, tuple(d.size for d in v.tensor_shape.dim))
                       for k, v in sig.inputs.items()}
        self.outputs = tuple(sorted(sig.outputs))
        self._fn = fn
        flat_specs = tf.nest.flatten(fn.structured_input_signature)
        self._order = [s.name for s in flat_specs]
        self._flat = hasattr(fn, "_call_flat") and sorted(self._order) == sorted(self.inputs) \
            and len(set(self._order)) == len(self._order)
        self._direct = _direct_entry(fn) if self._flat else None
        # per request nothing is re-derived from the SignatureDef: the checks walk this prebuilt list
        self._keys = frozenset(self.inputs)
        self._checks = [(k, spec, None if spec.dtype == types_pb2.DT_STRING else _np_dtype(spec.dtype))
                        for k, spec in self.inputs.items()]

    def validate(self, inputs: dict[str, np.ndarray]) -> None:
        if inputs.keys() != self._keys:
            self._check_names(inputs)
        batch, batch_from = None, None
        for k, spec, np_dtype in self._checks:
            a = inputs[k]
            if not (a.dtype.kind in "OSU" if np_dtype is None else a.dtype == np_dtype):
                _check_dtype(self.name, spec, a)  # a byte-order variant passes; anything else raises
            if a.ndim != len(spec.shape) or any(e not in (-1, g) for e, g in zip(spec.shape, a.shape)):
                raise invalid(f"signature {self.name!r}: input {k!r} has shape {list(a.shape)}; "
                              f"expected {spec.describe()}")
            if spec.shape and spec.shape[0] == -1:
                if a.shape[0] == 0:
                    raise invalid(f"signature {self.name!r}: input {k!r} is an empty batch (0 rows)")
                if batch is None:
                    batch, batch_from = a.shape[0], k
                elif a.shape[0] != batch:
                    raise invalid(f"signature {self.name!r}: input {k!r} has {a.shape[0]} rows but "
                                  f"{batch_from!r} has {batch}; the batch inputs must agree")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = int(np.argwhere(~np.isfinite(a))[0][0]) if a.ndim else 0
                raise invalid(f"signature {self.name!r}: input {k!r} holds NaN or inf (first at row {bad})")

    def _check_names(self, inputs: dict[str, np.ndarray]) -> None:
        missing = sorted(self._keys - set(inputs))
        if missing:
            raise invalid(f"signature {self.name!r}: missing input(s) {', '.join(map(repr, missing))} "
                          f"(expects {', '.join(sorted(self.inputs))})")
        extra = sorted(set(inputs) - self._keys)
        if extra:
            raise invalid(f"signature {self.name!r}: unexpected input(s) {', '.join(map(repr, extra))} "
                          f"(expects {', '.join(sorted(self.inputs))})")

    def run(self, inputs: dict[str, np.ndarray], output_filter=()) -> dict[str, np.ndarray]:
        """Validate, run, return the (filtered) outputs as numpy; a non-finite score is refused."""
        self.validate(inputs)
        wanted = self._wanted(output_filter)
        try:
            if self._direct is not None and tf.executing_eagerly():
                atomic, captured = self._direct
                out = atomic.call_preflattened(_tensors([inputs[k] for k in self._order]) + captured)
            elif self._flat:
                out = self._fn._call_flat(_tensors([inputs[k] for k in self._order]), self._fn.captured_inputs)
            else:
                out = self._fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as e:
            raise invalid(f"signature {self.name!r}: {e.message.splitlines()[0]}") from None
        except UnicodeDecodeError:
            # TensorFlow's parse error echoes the client's bytes, and turning that status into an exception
            # fails when they are not UTF-8: still the client's mistake, never an INTERNAL error
            raise invalid(f"signature {self.name!r}: an input could not be parsed (e.g. bytes that are not a "
                          f"serialized tf.Example); TensorFlow's message held non-UTF-8 bytes") from None
        result = {k: out[k].numpy() for k in wanted}
        for k, v in result.items():
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise invalid(f"signature {self.name!r}: output {k!r} is not finite; an input (e.g. a "
                              f"numeric feature inside a serialized Example) holds NaN or inf")
        return result

    def _wanted(self, output_filter) -> tuple[str, ...]:
        if not output_filter:
            return self.outputs
        unknown = [k for k in output_filter if k not in self.outputs]
        if unknown:
            raise invalid(f"signature {self.name!r}: output_filter names unknown output(s) {unknown}; "
                          f"outputs are {list(self.outputs)}")
        return tuple(dict.fromkeys(output_filter))


def _direct_entry(fn) -> tuple[object, list] | None:
    """(the restored function's inner atomic function, its captured inputs resolved once) or None.

    ConcreteFunction._call_flat re-resolves every captured variable and table handle (~60 on the light net)
    through the distribution-strategy wrapper of restored functions and checks for gradient tapes on each
    call; a server calls eagerly, with no tape and no strategy, so the handles are resolved once here and the
    atomic function is called with them. Anything unexpected (a distributed variable, another TF layout)
    keeps the _call_flat path."""
    atomic = getattr(fn, "_inference_function", None)
    if atomic is None or not hasattr(atomic, "call_preflattened"):
        return None
    try:
        captured = list(fn.captured_inputs)
    except Exception:  # noqa: BLE001 - an unfamiliar function object: the documented path still works
        return None
    if not all(isinstance(c, tf.Tensor) for c in captured):
        return None
    return atomic, captured


def _tensors(arrays: list[np.ndarray]) -> list[tf.Tensor]:
    """Validated numpy inputs -> eager tensors, exactly as tf.constant(array) makes them."""
    if _EagerTensor is None:
        return [tf.constant(a) for a in arrays]
    ctx = _eager_context.context()
    ctx.ensure_initialized()
    return [_EagerTensor(a, ctx.device_name, None) for a in arrays]


def _check_dtype(sig: str, spec: InputSpec, a: np.ndarray) -> None:
    ok = a.dtype.kind in "OSU" if spec.dtype == types_pb2.DT_STRING else \
        (a.dtype.kind not in "OSU" and np.dtype(a.dtype).newbyteorder("=") == _np_dtype(spec.dtype))
    if not ok:
        got = "string" if a.dtype.kind in "OSU" else str(a.dtype)
        raise invalid(f"signature {sig!r}: input {spec.name!r} has dtype {got}; expected {spec.describe()}")


def _np_dtype(enum: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)


def decode_inputs(inputs) -> dict[str, np.ndarray]:
    """PredictRequest.inputs -> numpy; an undecodable tensor is an INVALID_ARGUMENT naming the input."""
    out = {}
    for k, tp in inputs.items():
        try:
            out[k] = to_numpy(tp)
        except TensorError as e:
            raise invalid(f"input {k!r}: {e}") from None
    return out


@dataclass
class Servable:
    """A loaded version: signature runners, the raw SignatureDefs (for metadata) and the export's metadata."""

    version: int
    path: str  # local or a URL (common.fs)
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    runners: dict[str, SignatureRunner]
    info: dict = field(default_factory=dict)
    module: object = None  # keeps the restored object (and its variables) alive

    def runner(self, signature_name: str) -> SignatureRunner:
        name = signature_name or "serving_default"
        if name not in self.runners:
            raise invalid(f"signature {name!r} not found in version {self.version}; "
                          f"available: {sorted(self.runners)}")
        return self.runners[name]


def read_signature_defs(path: str | os.PathLike) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The serving tag's SignatureDefs straight from saved_model.pb (what TF Serving reports as metadata)."""
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(fs.read_bytes(fs.join(path, "saved_model.pb")))
    for mg in sm.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return {k: v for k, v in mg.signature_def.items() if k not in INTERNAL_SIGNATURES}
    raise ValueError(f"{path}: no MetaGraph tagged 'serve'")


def load_servable(path: str | os.PathLike, version: int) -> Servable:
    """Load one version folder (local or a URL); raises (with the reason) when anything is missing or
    inconsistent."""
    path = fs.as_str(path)
    defs = read_signature_defs(path)
    module = tf.saved_model.load(path, tags=["serve"])
    runners = {}
    for name, sig in defs.items():
        if name not in module.signatures:
            raise ValueError(f"{path}: signature {name!r} in saved_model.pb but not restorable")
        runners[name] = SignatureRunner(name, sig, module.signatures[name])
    meta = fs.join(path, ASSETS_EXTRA, METADATA_FILE)
    info = fs.read_json(meta) if fs.exists(meta) else {}
    return Servable(version, path, defs, runners, info, module)
