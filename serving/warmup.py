"""TF Serving's warmup file: assets.extra/tf_serving_warmup_requests, a TFRecord of PredictionLog.

The export writes real requests there; TF Serving replays them before marking a version AVAILABLE, and so
does our registry, so the first live request after a swap does not pay for graph warm-up (lazy kernel
initialisation, table loads). Same file, same format, for both servers.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap


def warmup_path(version_dir: str | Path) -> Path:
    return Path(version_dir) / "assets.extra" / WARMUP_FILE


def write_warmup(version_dir: str | Path, requests: list[predict_pb2.PredictRequest]) -> Path:
    """Write PredictRequests as PredictionLog(predict_log=PredictLog(request=...)) records."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warmup requests; TF Serving reads at most {MAX_WARMUP_RECORDS}")
    path = warmup_path(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=r))
            w.write(log.SerializeToString())
    return path


def read_warmup(version_dir: str | Path) -> tuple[list[predict_pb2.PredictRequest], int]:
    """(predict requests, count of other log kinds skipped); [] when the version has no warmup file."""
    path = warmup_path(version_dir)
    if not path.exists():
        return [], 0
    out, skipped = [], 0
    for raw in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if log.WhichOneof("log_type") == "predict_log":
            out.append(log.predict_log.request)
        else:
            skipped += 1
    return out, skipped
