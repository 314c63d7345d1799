"""Distribution strategy and this process's role in the cluster, from train.strategy and TF_CONFIG.

- default: one device (tf.distribute default strategy).
- mirrored: every local GPU (synchronous all-reduce); on a CPU-only host it is one replica.
- multi_worker_mirrored: synchronous data parallelism over the workers listed in TF_CONFIG; every worker
  runs the same `rocketctr train` command, only the chief writes checkpoints, TensorBoard logs and exports.
- parameter_server: asynchronous training; TF_CONFIG lists chief, worker and ps tasks. The chief runs the
  training loop (the coordinator); worker and ps tasks only host a tf.distribute.Server and block.

Non-chief workers still go through every save (MultiWorkerMirrored saves may involve collectives) but into
a throw-away temp folder: the standard MWMS pattern.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common import fs
from models.config import ConfigError


@dataclass(frozen=True)
class ClusterRole:
    """Where this process sits: task type/index, how many workers read data, and whether it is the chief."""

    task_type: str | None
    task_id: int
    num_workers: int
    is_chief: bool

    def write_dir(self, run_dir: str | os.PathLike, sub: str) -> str:
        """run_dir/sub on the chief (local or a URL); a per-worker local temp folder elsewhere (deleted by
        `cleanup`)."""
        if self.is_chief:
            return fs.join(run_dir, *sub.split("/"))
        return str(Path(tempfile.gettempdir()) / f"rocketctr-{os.getpid()}-{self.task_type}{self.task_id}" / sub)

    def cleanup(self) -> None:
        if not self.is_chief:
            shutil.rmtree(Path(tempfile.gettempdir()) / f"rocketctr-{os.getpid()}-{self.task_type}{self.task_id}",
                          ignore_errors=True)


def tf_config() -> dict:
    """The parsed TF_CONFIG (empty dict when unset); a malformed value is a clear error."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "cluster" not in cfg or "task" not in cfg:
        raise ConfigError("TF_CONFIG must be {\"cluster\": {...}, \"task\": {\"type\": ..., \"index\": ...}}")
    return cfg


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Build the strategy named by train.strategy (multi-worker ones read TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        cfg = tf_config()
        if not cfg:
            raise ConfigError("train.strategy=parameter_server needs TF_CONFIG with chief, worker and ps tasks")
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        n_ps = len(cfg["cluster"].get("ps", []))
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256 << 10, max_shards=max(1, n_ps))
        return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    raise ConfigError(f"train.strategy: {name!r} is not a known strategy")


def is_server_task(name: str) -> bool:
    """True when this process is a parameter-server cluster's worker or ps task (it serves, never trains)."""
    return name == "parameter_server" and tf_config().get("task", {}).get("type") in ("worker", "ps")


def run_server() -> None:
    """Host this task's tf.distribute.Server until killed (parameter-server worker / ps tasks)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc", start=True)
    server.join()


def cluster_role(strategy: tf.distribute.Strategy) -> ClusterRole:
    """This process's role; the chief is task `chief`, or `worker` 0 when the cluster has no chief."""
    cfg = tf_config()
    task = cfg.get("task", {})
    ttype, tid = task.get("type"), int(task.get("index", 0))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        ttype, tid = resolver.task_type, int(resolver.task_id or 0)
        workers = len(cfg.get("cluster", {}).get("worker", [])) + len(cfg.get("cluster", {}).get("chief", []))
        chief = ttype in (None, "chief") or (ttype == "worker" and tid == 0
                                            and "chief" not in cfg.get("cluster", {}))
        return ClusterRole(ttype, tid, max(1, workers), chief)
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return ClusterRole(ttype, tid, len(cfg["cluster"].get("worker", [])), ttype == "chief")
    return ClusterRole(ttype, tid, 1, True)
