"""Server-side batching parameters, read the way TF Serving reads them (`--batching_parameters_file`).

The file is TF Serving's text-format `tensorflow.serving.BatchingParameters` (session_bundle_config.proto), e.g.

    max_batch_size { value: 1200 }
    batch_timeout_micros { value: 1000 }
    max_enqueued_batches { value: 16 }
    num_batch_threads { value: 2 }

so one file configures this server and the real binary alike. tensorflow-serving-api (the pip package) ships only
the API protos, not this one, so the message is built here from a FileDescriptorProto in a private descriptor pool
(the same field names, numbers and wrapper types) and parsed with protobuf's own text_format: comments, both
`f { value: 1 }` and `f: { value: 1 }`, and line:column errors, as in TF Serving. Omitted fields keep TF's defaults
(SharedBatchScheduler: a batch of up to 1000 rows, no timeout, 10 enqueued batches, a thread per core).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from common import fs

_PACKAGE = "tensorflow.serving"
_OPT, _REP = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_MSG = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """BatchingParameters of tensorflow_serving/servables/tensorflow/session_bundle_config.proto."""
    f = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/servables/tensorflow/batching_parameters.proto",
                                           package=_PACKAGE, syntax="proto3",
                                           dependency=["google/protobuf/wrappers.proto"])
    m = f.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        m.field.add(name=name, number=number, label=_OPT, type=_MSG, type_name=f".google.protobuf.{wrapper}")
    m.field.add(name="allowed_batch_sizes", number=6, label=_REP, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    m.field.add(name="pad_variable_length_inputs", number=7, label=_OPT,
                type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
    return f


_POOL = descriptor_pool.DescriptorPool()
_wrappers = descriptor_pb2.FileDescriptorProto()
wrappers_pb2.DESCRIPTOR.CopyToProto(_wrappers)
_POOL.Add(_wrappers)
_POOL.Add(_file_descriptor())
BatchingParametersProto = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.BatchingParameters"))


@dataclass(frozen=True)
class BatchingParameters:
    """What the batcher uses. Sizes count rows (the batch dimension), as TF Serving's max_batch_size does."""

    max_batch_size: int = 1000  # rows per merged call; a bigger request runs on its own
    batch_timeout_micros: int = 0  # 0: a batch runs as soon as a batch thread is free
    max_enqueued_batches: int = 10  # batches waiting (not running) per queue; beyond: UNAVAILABLE
    num_batch_threads: int = 0  # 0 = one per core (TF's default)
    ignored: tuple[str, ...] = ()  # fields of the file this server does not act on (logged at startup)

    def __post_init__(self) -> None:
        for name, low in (("max_batch_size", 1), ("batch_timeout_micros", 0), ("max_enqueued_batches", 1),
                          ("num_batch_threads", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"batching parameter {name} must be an integer >= {low}, got {v!r}")

    @property
    def threads(self) -> int:
        return self.num_batch_threads or os.cpu_count() or 1

    @property
    def timeout_seconds(self) -> float:
        return self.batch_timeout_micros / 1e6

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ignored"} | \
            {"num_batch_threads": self.threads}


# fields TF Serving acts on that this server does not: they are accepted (so one file serves both) and reported
_IGNORED_WHY = {
    "thread_pool_name": "a name only",
    "allowed_batch_sizes": "batches are not padded to fixed sizes (eager calls need no fixed shapes)",
    "pad_variable_length_inputs": "requests merge only when their non-batch shapes agree; nothing is padded",
}


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """TF Serving's text-format BatchingParameters -> BatchingParameters; a syntax error or a bad value names the
    field (and line:column) and what was expected."""
    msg = BatchingParametersProto()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ValueError(f"{source}: not a text-format tensorflow.serving.BatchingParameters: {e}") from None
    values = {name: getattr(msg, name).value for name in ("max_batch_size", "batch_timeout_micros",
                                                          "max_enqueued_batches", "num_batch_threads")
              if msg.HasField(name)}
    ignored = tuple(f"{f.name} ({_IGNORED_WHY[f.name]})" for f, _ in msg.ListFields() if f.name in _IGNORED_WHY)
    try:
        return BatchingParameters(**values, ignored=ignored)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_batching_parameters(path: str | os.PathLike | None = None, **overrides: int | None) -> BatchingParameters:
    """The file's parameters (TF's defaults without a file), then any direct flag that is not None."""
    params = BatchingParameters()
    if path is not None:
        try:
            text = fs.read_text(path)
        except Exception as e:  # noqa: BLE001 - OSError, UnicodeDecodeError or TF's NotFoundError for a URL
            raise ValueError(f"--batching_parameters_file {path}: cannot read it "
                             f"({type(e).__name__}: {e})") from None
        params = parse_batching_parameters(text, str(path))
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return replace(params, **given)
    except (TypeError, ValueError) as e:
        raise ValueError(f"batching flags: {e}") from None
