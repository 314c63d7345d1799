"""serving.tensors agrees with TensorFlow's own TensorProto codec (both directions), minus its overhead."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.tensors import TensorError, from_numpy, to_numpy

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
    np.array([1.5, -2.25], dtype=np.float64),
    np.array([[1, -2], [3, 4]], dtype=np.int32),
    np.array([2**40, -1], dtype=np.int64),
    np.array([True, False]),
    np.array([b"a", b"", "\u00e9".encode()], dtype=object),
    np.array([[b"x", b"y"], [b"", b"z"]], dtype=object),
    np.zeros((0,), dtype=np.float32),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_roundtrip_matches_tensorflow(arr):
    ours = from_numpy(arr)
    np.testing.assert_array_equal(tf.make_ndarray(ours), arr)  # TF reads what we write
    np.testing.assert_array_equal(to_numpy(tf.make_tensor_proto(arr)), arr)  # we read what TF writes
    np.testing.assert_array_equal(to_numpy(ours), arr)
    if arr.dtype.kind != "O" and arr.size:
        assert ours.tensor_content and not ours.float_val  # the fast encoding


def test_typed_value_fields_and_tensorflow_fill_rule():
    tp = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    tp.tensor_shape.dim.add().size = 4
    tp.float_val.extend([1.0, 2.0])
    np.testing.assert_array_equal(to_numpy(tp), tf.make_ndarray(tp))  # [1, 2, 2, 2]
    np.testing.assert_array_equal(to_numpy(tp), [1, 2, 2, 2])
    s = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    s.tensor_shape.dim.add().size = 3
    s.string_val.append(b"u")
    np.testing.assert_array_equal(to_numpy(s), np.array([b"u"] * 3, dtype=object))
    scalar = from_numpy(np.float32(3.5))
    assert to_numpy(scalar).shape == () and to_numpy(scalar) == 3.5
    assert from_numpy(["a", "b"]).string_val == [b"a", b"b"]


def test_malformed_protos_are_named_errors():
    tp = from_numpy(np.ones(4, np.float32))
    tp.tensor_content = tp.tensor_content[:-1]
    with pytest.raises(TensorError, match="tensor_content has 15 bytes"):
        to_numpy(tp)
    too_many = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    too_many.tensor_shape.dim.add().size = 1
    too_many.int64_val.extend([1, 2])
    with pytest.raises(TensorError, match="2 values given"):
        to_numpy(too_many)
    with pytest.raises(TensorError, match="unsupported dtype complex64"):
        to_numpy(tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64))
    unknown = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(TensorError, match="unknown rank"):
        to_numpy(unknown)
    with pytest.raises(TensorError, match="holds a int"):
        from_numpy(np.array([b"a", 3], dtype=object))
