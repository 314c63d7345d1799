"""TensorProto <-> numpy without tf.make_tensor_proto / tf.make_ndarray.

Those helpers go through generic Python paths that cost more than the light net itself for a 300-candidate
request. Here numerics are read and written through `tensor_content` (one np.frombuffer / tobytes) and
strings through the repeated `string_val` field, which is what TF Serving clients send. Decoding follows
TensorFlow's own rules (Tensor::FromProto): values may come in tensor_content or the typed *_val field,
and fewer values than elements repeat the last one.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2


class TensorError(ValueError):
    """A TensorProto cannot be decoded (unsupported dtype, bad shape, wrong number of values)."""


# TensorFlow's "repeat the last value" rule lets a few bytes declare any shape; without a cap a tiny request
# with shape [2**31] would make the server allocate (and score) billions of elements. Tensors whose values
# are all present are bounded by the gRPC message limit instead.
MAX_FILLED_ELEMENTS = 1 << 20


# DataType enum -> (numpy dtype, name of the repeated *_val field)
_NUMERIC: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype("?"), "bool_val"),
}
_TO_ENUM: dict[str, int] = {np.dtype(v[0]).str.lstrip("<|"): k for k, v in _NUMERIC.items()}
_TO_ENUM["f4"] = types_pb2.DT_FLOAT  # canonical numpy spellings
_TO_ENUM["f8"] = types_pb2.DT_DOUBLE

DTYPE_NAMES: dict[int, str] = {v: k.lower().removeprefix("dt_")
                               for k, v in types_pb2.DataType.items()}


def dtype_name(enum: int) -> str:
    """'float', 'string', ... for error messages (TF's own spelling, without the DT_ prefix)."""
    return DTYPE_NAMES.get(enum, str(enum))


def proto_shape(tp: tensor_pb2.TensorProto) -> tuple[int, ...]:
    shape = tp.tensor_shape
    if shape.unknown_rank:
        raise TensorError("tensor_shape has unknown rank; a request tensor needs a concrete shape")
    dims = tuple([d.size for d in shape.dim])
    if any(d < 0 for d in dims):
        raise TensorError(f"tensor_shape {list(dims)} has a negative dimension")
    return dims


def to_numpy(tp: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode one request tensor. Strings become an object array of bytes (what tf.constant takes fastest)."""
    shape = proto_shape(tp)
    n = math.prod(shape)
    if tp.dtype == types_pb2.DT_STRING:
        values = list(tp.string_val)
        if len(values) == n:
            arr = np.empty(n, dtype=object)
            arr[:] = values
            return arr.reshape(shape) if len(shape) != 1 else arr
        return _fill(np.array(values, dtype=object), n, shape, tp.dtype)
    if tp.dtype not in _NUMERIC:
        raise TensorError(f"unsupported dtype {dtype_name(tp.dtype)}")
    np_dtype, field = _NUMERIC[tp.dtype]
    content = tp.tensor_content
    if content:
        if len(content) != n * np_dtype.itemsize:
            raise TensorError(f"tensor_content has {len(content)} bytes; shape {list(shape)} of "
                              f"{dtype_name(tp.dtype)} needs {n * np_dtype.itemsize}")
        return np.frombuffer(content, dtype=np_dtype).reshape(shape)
    values = getattr(tp, field)
    return _fill(np.asarray(values, dtype=np_dtype), n, shape, tp.dtype)


def _fill(flat: np.ndarray, n: int, shape: tuple[int, ...], dtype: int) -> np.ndarray:
    """TensorFlow's rule for short value lists: repeat the last value (an empty list means all zeros/"")."""
    if flat.size == n:
        return flat.reshape(shape)
    if flat.size > n:
        raise TensorError(f"{flat.size} values given for shape {list(shape)} ({n} elements)")
    if n > MAX_FILLED_ELEMENTS:
        raise TensorError(f"shape {list(shape)} ({n} elements) with only {flat.size} values given; a tensor "
                          f"filled by repeating its last value is limited to {MAX_FILLED_ELEMENTS} elements")
    if flat.size == 0:
        fill = b"" if dtype == types_pb2.DT_STRING else 0
    else:
        fill = flat[-1]
    out = np.empty(n, dtype=flat.dtype)
    out[:flat.size] = flat
    out[flat.size:] = fill
    return out.reshape(shape)


def from_numpy(arr: np.ndarray | list | str | bytes | float | int) -> tensor_pb2.TensorProto:
    """Encode numpy (or a list / scalar) as a TensorProto: numerics in tensor_content, strings in string_val."""
    tp = tensor_pb2.TensorProto()
    fill_proto(tp, arr)
    return tp


def fill_proto(tp: tensor_pb2.TensorProto, arr) -> None:
    """Write `arr` into an existing (e.g. map-entry) TensorProto in place: saves a copy per response output."""
    a = np.asarray(arr)
    for d in a.shape:
        tp.tensor_shape.dim.add().size = int(d)
    if a.dtype.kind in "OUS":
        tp.dtype = types_pb2.DT_STRING
        tp.string_val.extend(_as_bytes(v) for v in a.reshape(-1).tolist())
        return
    key = a.dtype.str.lstrip("<>|=")
    if key not in _TO_ENUM:
        raise TensorError(f"cannot encode numpy dtype {a.dtype}")
    tp.dtype = _TO_ENUM[key]
    tp.tensor_content = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def _as_bytes(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TensorError(f"string tensor holds a {type(v).__name__} ({v!r}); expected str or bytes")
