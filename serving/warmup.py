"""TF Serving's warmup file: assets.extra/tf_serving_warmup_requests, a TFRecord of PredictionLog.

The export writes real requests there; TF Serving replays them before marking a version AVAILABLE, and so
does our registry, so the first live request after a swap does not pay for graph warm-up (lazy kernel
initialisation, table loads). Same file, same format, for both servers.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from common import fs

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap


def warmup_path(version_dir: str | os.PathLike) -> str:
    return fs.join(version_dir, "assets.extra", WARMUP_FILE)


def write_warmup(version_dir: str | os.PathLike, requests: list[predict_pb2.PredictRequest]) -> str:
    """Write PredictRequests as PredictionLog(predict_log=PredictLog(request=...)) records."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warmup requests; TF Serving reads at most {MAX_WARMUP_RECORDS}")
    path = warmup_path(version_dir)
    fs.makedirs(fs.parent(path))
    with tf.io.TFRecordWriter(path) as w:
        for r in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=r))
            w.write(log.SerializeToString())
    return path


def read_warmup(version_dir: str | os.PathLike) -> tuple[list[predict_pb2.PredictRequest], int]:
    """(predict requests, count of other log kinds skipped); [] when the version has no warmup file."""
    path = warmup_path(version_dir)
    if not fs.exists(path):
        return [], 0
    out, skipped = [], 0
    for raw in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if log.WhichOneof("log_type") == "predict_log":
            out.append(log.predict_log.request)
        else:
            skipped += 1
    return out, skipped
