"""Training progress that survives a crash, and the Keras callback that checkpoints and logs it.

The progress counters (global step, epoch, step within the epoch, early-stopping state, wall time so far)
live in Python during training and are copied into tf.Variables just before each save, so they are part of
the same checkpoint as the weights and optimizer slots: `--resume` then knows exactly how many batches of
the current epoch were already trained and skips them (the data order is a pure function of the seed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Callable

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from common.progress import ProgressReporter

# tf.summary.scalar lives in the tensorboard package, which this environment does not install; writing the
# same event (a float tensor tagged with the "scalars" plugin) through core tf.summary.write keeps the logs
# readable by any TensorBoard without the dependency.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


@dataclass
class Progress:
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_auc: float = -1.0  # the light net's best validation AUC so far
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since best_auc improved (early stopping)
    booster_best_auc: float = -1.0  # per-tower early stopping of the booster
    booster_bad_epochs: int = 0
    booster_frozen: int = 0
    wall_seconds: float = 0.0  # training wall time accumulated before this process started
    examples: int = 0  # training examples consumed: steps x batch rows (held-out share removed; estimate)


class TrainState(tf.Module):
    """Progress as checkpointable variables (float64 so wall time and counts round-trip exactly)."""

    def __init__(self) -> None:
        super().__init__(name="train_state")
        self.values = {f.name: tf.Variable(0.0, dtype=tf.float64, trainable=False, name=f.name)
                       for f in fields(Progress)}

    def write(self, p: Progress) -> None:
        for f in fields(Progress):
            self.values[f.name].assign(float(getattr(p, f.name)))

    def read(self) -> Progress:
        kw = {}
        for f in fields(Progress):
            v = float(self.values[f.name].numpy())
            kw[f.name] = int(v) if f.type in (int, "int") else v
        return Progress(**kw)


class StepCallback(tf.keras.callbacks.Callback):
    """Counts steps, writes per-tower scalars to TensorBoard every `log_every` steps and checkpoints every
    `ckpt_every` steps through `save` (which runs on every worker; only the chief's lands in RUN_DIR)."""

    def __init__(self, progress: Progress, batch_size: float, writer: tf.summary.SummaryWriter,
                 log_every: int, ckpt_every: int, save: Callable[[], None]) -> None:
        super().__init__()
        # logs stay tensors (converted only every log_every steps); under ParameterServerStrategy they are
        # RemoteValues, which write_scalars fetches: Keras then allows this batch-level callback there too
        self._supports_tf_logs = True
        self.progress, self.batch_size = progress, batch_size
        self.writer, self.log_every, self.ckpt_every, self.save = writer, max(1, log_every), ckpt_every, save
        self._t0 = time.monotonic()

    def on_train_begin(self, logs=None) -> None:
        self._t0 = time.monotonic()
        self._start_global, self._start_in_epoch = self.progress.global_step, self.progress.step_in_epoch

    def on_train_batch_end(self, batch, logs=None) -> None:
        # with steps_per_execution > 1 Keras calls this once per execution, `batch` being the last step's index
        p = self.progress
        before = p.global_step
        p.global_step = self._start_global + batch + 1
        p.step_in_epoch = self._start_in_epoch + batch + 1
        p.examples = int(round(p.global_step * self.batch_size))
        if logs and p.global_step // self.log_every > before // self.log_every:
            write_scalars(self.writer, p.global_step, logs, flush=False)
        if self.ckpt_every and p.global_step // self.ckpt_every > before // self.ckpt_every:
            self.flush_wall()
            self.save()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.model.stop_training = True  # one epoch per fit call (see models.train)

    def on_train_end(self, logs=None) -> None:
        self.flush_wall()
        self.writer.flush()

    def flush_wall(self) -> None:
        now = time.monotonic()
        self.progress.wall_seconds += now - self._t0
        self._t0 = now


class ProgressCallback(tf.keras.callbacks.Callback):
    """Progress you can watch (common.progress): steps done / total, examples/s, ETA and the running loss and
    per-tower AUC, as a line every interval (no TTY, or `bar=False` as with --quiet) or a terminal bar.

    One instance spans the whole run (models.train calls fit once per epoch with the same callbacks), so the
    total is steps already done + this epoch's remaining steps + the later epochs' full steps, capped by
    max_steps; unknown (a cluster, or skipped shards) when Keras does not know the epoch's length."""

    FIELDS = ("loss", "light_auc", "booster_auc", "teacher_auc")

    def __init__(self, progress: Progress, rows_per_step: float, epochs: int, max_steps: int | None,
                 bar: bool = True, reporter: ProgressReporter | None = None) -> None:
        super().__init__()
        self._supports_tf_logs = True  # values are converted only when a line is due (see StepCallback)
        self.progress, self.rows_per_step, self.epochs, self.max_steps = progress, rows_per_step, epochs, max_steps
        self.reporter = reporter or ProgressReporter("train", unit="steps", bar=bar, start=progress.global_step)
        self._begin = progress.global_step
        self._logs = None

    def on_train_begin(self, logs=None) -> None:
        p = self.progress
        self._begin = p.global_step
        self.reporter.set_total(self.total_steps(self.params.get("steps"), p.global_step, p.step_in_epoch, p.epoch))

    def total_steps(self, steps: int | None, global_step: int, step_in_epoch: int, epoch: int) -> int | None:
        """The run's total steps, given this fit call's `steps` (the rest of epoch `epoch`)."""
        if steps is None:
            return self.max_steps
        total = global_step + steps + max(0, self.epochs - epoch - 1) * (step_in_epoch + steps)
        return total if self.max_steps is None else min(total, self.max_steps)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._logs = logs
        self.reporter.update(self._begin + batch + 1, fields=self.fields)

    def on_train_end(self, logs=None) -> None:
        self.reporter.break_line()  # end of an epoch's fit: its validation log starts on a fresh line

    def fields(self) -> dict[str, float]:
        """examples/s, loss and the towers' AUC (running over the current epoch, as Keras reports them)."""
        rate = self.reporter.rate()
        out: dict[str, float] = {"examples/s": round(rate * self.rows_per_step, 1)} if rate else {}
        logs = self._logs
        if logs is None:
            return out
        if hasattr(logs, "fetch"):  # parameter-server training: the whole logs dict is one RemoteValue
            logs = logs.fetch()
        for k in self.FIELDS:
            if k in logs:
                v = logs[k]
                out[k] = float(v.fetch() if hasattr(v, "fetch") else v)
        return out

    def finish(self) -> str:
        """The run's last line (always printed)."""
        return self.reporter.finish(self.fields)


def _tb_name(key: str) -> str:
    """`light_auc` -> `light/auc`: one TensorBoard section per tower."""
    for tower in ("light", "booster", "teacher"):
        if key.startswith(tower + "_"):
            return f"{tower}/{key[len(tower) + 1:]}"
    return key


def write_scalars(writer: tf.summary.SummaryWriter, step: int, values: dict, flush: bool = True) -> None:
    """One TensorBoard scalar per finite value, grouped by tower."""
    if hasattr(values, "fetch"):  # parameter-server training: the whole logs dict is one RemoteValue
        values = values.fetch()
    with writer.as_default(step=step):
        for k, v in values.items():
            value = float(v.fetch() if hasattr(v, "fetch") else v)  # parameter-server logs are RemoteValues
            if math.isfinite(value):
                tf.summary.write(_tb_name(k), tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
    if flush:
        writer.flush()
