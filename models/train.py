"""The training job: preprocessed TFRecords -> a run directory (checkpoints, TensorBoard, metrics, towers).

Regimes: one-pass streaming (epochs=1, the production default), several epochs with early stopping on the
light net's validation AUC (validation = a hashed slice of the *train* split; the eval split is scored once,
at the end), and max_steps. Every `checkpoint_every_steps` the weights, optimizer slots and progress are
checkpointed; `resume=True` restores the last one and skips the batches of the current epoch that were
already trained, so a killed job ends where an uninterrupted one would (same data order, same updates).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import feature_specs
import tensorflow as tf

from common import fs
from feature_specs import artifacts
from feature_specs.schema import FeatureSpec
from models import data, data_cache, distribute, split_scoring
from models import calibration
from models.callbacks import Progress, ProgressCallback, StepCallback, TrainState, write_scalars
from models.config import ConfigError, RunConfig
from models.rocket import build_model
from models.run import RunError, RunPaths, check_resume_config, read_run_config, resolve_spec, write_json, \
    write_run_config

log = logging.getLogger("rocketctr.train")
STEPS_PER_EXECUTION = 8


def train(cfg: RunConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike, resume: bool = False,
          verbose: int = 1) -> str | Path:
    """Train per `cfg` on DIR's train split; return the run dir (a Path when local, else the URL; both may be
    anywhere common.fs reaches). Raises ConfigError / ArtifactError /
    CorruptShardError with a message naming what is wrong."""
    if distribute.is_server_task(cfg.train.strategy):
        distribute.run_server()  # parameter-server worker/ps: serve the chief until killed
        return fs.native(run_dir)
    spec = resolve_spec(cfg, data_dir)
    tf.keras.utils.set_random_seed(cfg.train.seed)  # same seed -> same initial weights (resume/compare runs)
    strategy = distribute.make_strategy(cfg.train.strategy)
    role = distribute.cluster_role(strategy)
    try:
        return TrainingJob(cfg, spec, fs.as_str(data_dir), fs.as_str(run_dir), strategy, role, verbose).run(resume)
    finally:
        role.cleanup()


class TrainingJob:
    """One training run; the pieces are methods so the loop in `run` reads like the regime it implements."""

    def __init__(self, cfg: RunConfig, spec: FeatureSpec, data_dir: str, run_dir: str,
                 strategy: tf.distribute.Strategy, role: distribute.ClusterRole, verbose: int) -> None:
        self.cfg, self.spec, self.data_dir, self.paths = cfg, spec, data_dir, RunPaths(run_dir)
        self.strategy, self.role, self.verbose = strategy, role, verbose
        self.t = cfg.train
        self.fraction = self.t.validation_fraction
        self.holdout = data.Holdout()  # the validation slice's rule, set by _prepare_data (time: needs the data)
        self.cache: data_cache.CachedSplit | None = None
        self.skipped_shards: list[tuple[str, str]] = []
        self._saved_step = -1
        self.train_files = self._usable_shards("train")
        # Keras needs the epoch's step count to run several steps per call; it is ceil(rows / batch) on one
        # worker (the holdout shrinks batches but never drops one at realistic sizes; were it to, Keras just
        # ends the epoch early). Per-worker counts are unknown in a cluster or after skipping shards: 1 step.
        self.async_ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
        self.exact_rows = (role.num_workers == 1 or self.async_ps) and not self.skipped_shards
        self.steps_per_execution = STEPS_PER_EXECUTION if self.exact_rows and not self.async_ps else 1

    # ---------------------------------------------------------------------------------------- setup
    def _usable_shards(self, split: str) -> list[str]:
        files = data.shard_files(self.data_dir, split)
        if not self.t.skip_corrupt_shards:
            cut = data.truncated_shards(files)  # TensorFlow's reader would end these early without an error
            if cut:
                raise data.corrupt_error(cut)
            return files
        bad = data.find_corrupt_shards(files)
        for f, err in bad:
            log.warning("skipping corrupt shard %s: %s", f, err)
        self.skipped_shards += bad
        good = [f for f in files if f not in {b for b, _ in bad}]
        if not good:
            raise data.CorruptShardError(f"every {split} shard in {self.data_dir} is corrupt: {bad}")
        return good

    def _build(self) -> None:
        with self.strategy.scope():
            # kd: the teacher run's booster SavedModel; the job holds the loaded object so its variables live
            # as long as the student that calls its signature
            self.teacher = self._load_teacher()
            self.model = build_model(self.spec, self.data_dir, self.cfg, self.teacher)
            # per-part optimizers from cfg.train (weights: in the loss); several steps per tf.function call
            # cut the per-step Python overhead, which matters at ~20-40 steps/s on 2 cores
            self.model.compile(weighted_metrics=[], steps_per_execution=self.steps_per_execution)
            self.state = TrainState()
        self.ckpt = tf.train.Checkpoint(model=self.model, state=self.state)
        self.manager = tf.train.CheckpointManager(
            self.ckpt, self.role.write_dir(self.paths.root, "checkpoints"), max_to_keep=2)
        self.best = tf.train.CheckpointManager(tf.train.Checkpoint(model=self.model),
                                               self.role.write_dir(self.paths.root, "checkpoints/best"),
                                               max_to_keep=1)
        tb = self.role.write_dir(self.paths.root, "tb")
        self.writers = {k: tf.summary.create_file_writer(fs.join(tb, k)) for k in ("train", "validation", "eval")}

    def _load_teacher(self):
        """kd: the teacher run must be a finished booster/rocket run on the same spec; its towers/booster
        SavedModel becomes the frozen teacher."""
        if self.t.mode != "kd":
            return None
        teacher_dir = fs.as_str(self.t.teacher_run)
        tcfg, _, tspec = read_run_config(teacher_dir)
        if tcfg.train.mode not in ("booster", "rocket"):
            raise ConfigError(f"train.teacher_run: {teacher_dir} is a {tcfg.train.mode!r} run; kd needs a "
                              f"booster or rocket run whose booster becomes the teacher")
        if feature_specs.spec_hash(tspec) != feature_specs.spec_hash(self.spec):
            raise ConfigError(f"train.teacher_run: {teacher_dir} was trained on spec {tspec.name!r} with a "
                              f"different hash than this run's {self.spec.name!r}")
        booster = RunPaths(teacher_dir).tower("booster")
        if not fs.exists(fs.join(booster, "saved_model.pb")):
            raise RunError(f"train.teacher_run: {teacher_dir} has no towers/booster SavedModel (did it finish?)")
        return tf.saved_model.load(booster)

    def _restore(self, resume: bool) -> Progress:
        # every worker restores from the chief's folder (a shared filesystem, as in any multi-worker setup)
        latest = tf.train.latest_checkpoint(self.paths.checkpoints)
        if latest and not resume:
            raise RunError(f"{self.paths.root} already holds checkpoints ({latest}); pass --resume to continue "
                           f"that run or choose a new --out")
        if latest:
            self.ckpt.restore(latest).assert_existing_objects_matched()
            p = self.state.read()
            log.info("resumed from %s at step %d (epoch %d, step %d of it)", latest, p.global_step, p.epoch,
                     p.step_in_epoch)
            return p
        if resume:
            log.info("--resume: no checkpoint in %s yet, starting from scratch", self.paths.checkpoints)
        return Progress()

    def _save(self, progress: Progress) -> None:
        self.state.write(progress)
        self.manager.save(checkpoint_number=progress.global_step)
        self._saved_step = progress.global_step

    # ---------------------------------------------------------------------------------------- data
    def _prepare_data(self) -> None:
        """Cache the train split in memory when it fits (one worker, default strategy), and fix the validation
        slice's rule: it mirrors the eval split (time / row hash / group hash, models/holdout.py)."""
        if self.t.strategy == "default" and self.role.num_workers == 1 and not self.async_ps:
            self.cache = data_cache.load_train_cache(self.train_files, self.spec, self.fraction,
                                                     self.t.cache_max_mb)
        self.holdout = self.cache.holdout if self.cache else data.holdout_for(
            self.spec, self.fraction, "validation", files=self.train_files)

    def _train_ds(self, epoch: int, skip: int, take: int | None):
        if self.async_ps:
            return self._ps_train_input(epoch)
        if self.cache:
            return data_cache.cached_dataset(self.cache.train, self.spec, self.t.batch_size, shuffle=True,
                                             seed=self.t.seed * 1000 + epoch, skip_batches=skip, take_batches=take)
        return data.make_dataset(
            self.data_dir, self.spec, "train", self.t.batch_size, shuffle=True, seed=self.t.seed * 1000 + epoch,
            shuffle_buffer=self.t.shuffle_buffer, holdout=self.holdout.with_role("train"),
            files=self.train_files, skip_batches=skip, take_batches=take, num_workers=self.role.num_workers)

    def _ps_train_input(self, epoch: int) -> tf.keras.utils.experimental.DatasetCreator:
        """Parameter-server training: each worker reads its own shards (all of them when there are fewer
        shards than workers, with a per-worker seed), repeated; the chief dispatches steps_per_epoch steps.
        Asynchronous by nature, so a resumed epoch restarts its stream (documented approximation)."""
        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
            files = self.train_files[i::n] if len(self.train_files) >= n else self.train_files
            return data.make_dataset(
                self.data_dir, self.spec, "train", ctx.get_per_replica_batch_size(self.t.batch_size),
                shuffle=True, seed=self.t.seed * 1000 + epoch * 101 + i, shuffle_buffer=self.t.shuffle_buffer,
                holdout=self.holdout.with_role("train"), files=files).repeat()

        return tf.keras.utils.experimental.DatasetCreator(dataset_fn)

    def _scoring_ds(self, split: str, role: str) -> tf.data.Dataset:
        if split == "train" and role == "validation" and self.cache:
            return data_cache.cached_dataset(self.cache.validation, self.spec, max(self.t.batch_size, 4096),
                                             take_batches=self.t.eval_max_steps,
                                             holdout=self.holdout.with_role("validation"))
        files = self.train_files if split == "train" else self._usable_shards(split)
        holdout = self.holdout.with_role(role) if split == "train" else data.Holdout()
        return data.make_dataset(self.data_dir, self.spec, split, self.t.batch_size, files=files,
                                 holdout=holdout, take_batches=self.t.eval_max_steps)

    def _guard(self, files: list[str], fn):
        """Run fn(); an unreadable shard becomes an error naming the file."""
        try:
            return fn()
        except tf.errors.DataLossError as e:
            raise data.describe_corrupt(files, e) from None

    # ---------------------------------------------------------------------------------------- loop
    def run(self, resume: bool) -> str | Path:
        start = time.monotonic()
        if resume:
            check_resume_config(self.paths.root, self.cfg)
        if self.role.is_chief:
            write_run_config(self.paths.root, self.cfg, self.data_dir, self.spec)
        self._build()
        p = self._restore(resume)
        self._prepare_data()
        resumed_at = p.global_step if resume else None
        # rows per step: a cached batch holds only rows trained on; a streamed batch loses the held-out share
        rows_per_step = self.t.batch_size * (1.0 if self.cache else 1.0 - self.fraction)
        step_cb = StepCallback(p, rows_per_step, self.writers["train"],
                               self.t.log_every_steps, self.t.checkpoint_every_steps, lambda: self._save(p))
        # progress lines at a fixed interval even when quiet (verbose=0: no terminal bar); Keras' own bar is off
        progress_cb = ProgressCallback(p, rows_per_step, self.t.epochs, self.t.max_steps, bar=bool(self.verbose))
        stopped_early = False
        while p.epoch < self.t.epochs and not self._out_of_steps(p):
            take = None if self.t.max_steps is None else self.t.max_steps - p.global_step
            ds = self._train_ds(p.epoch, p.step_in_epoch, take)
            before = p.global_step
            # epochs=total with initial_epoch; the callback ends fit after this one epoch
            # (each epoch gets its own seeded stream, which is what makes resume exact)
            self._guard(self.train_files, lambda: self.model.fit(
                ds, initial_epoch=p.epoch, epochs=self.t.epochs, verbose=0, callbacks=[step_cb, progress_cb],
                steps_per_epoch=self._steps_hint(p, take)))
            if take is not None and p.global_step - before >= take:
                break  # max_steps hit inside the epoch: epoch/step_in_epoch stay where the data stopped
            p.epoch, p.step_in_epoch = p.epoch + 1, 0
            stopped_early = self._validate(p)
            self._save(p)
            if stopped_early:
                break
        progress_cb.finish()
        if self._saved_step != p.global_step:
            self._save(p)
        if p.best_epoch >= 0 and self.best.latest_checkpoint and self.t.epochs > 1:
            tf.train.Checkpoint(model=self.model).restore(self.best.latest_checkpoint).expect_partial()
        self._finish(p, start, stopped_early, resumed_at)
        return fs.native(self.paths.root)

    def _steps_hint(self, p: Progress, take: int | None) -> int | None:
        if not self.exact_rows:
            return None
        rows = self.cache.train.rows if self.cache else artifacts.read_stats(self.data_dir).train_rows
        if self.async_ps:  # repeated per-worker streams: the held-out share is really gone from each pass
            rows = int(round(rows * (1.0 - self.fraction)))
        n = -(-rows // self.t.batch_size) - p.step_in_epoch
        return n if take is None else min(n, take)

    def _out_of_steps(self, p: Progress) -> bool:
        return self.t.max_steps is not None and p.global_step >= self.t.max_steps

    def _validate(self, p: Progress) -> bool:
        """Score the held-out slice of the train split; update early stopping. True = stop now."""
        if self.fraction <= 0:
            return False
        # exact per-tower AUC/logloss (not Keras' binned streaming AUC); every worker scores the whole slice
        # with the same synchronous weights, so all of them take the same early-stopping decision
        labels, logits, weights = self._guard(self.train_files, lambda: split_scoring.score_dataset_weighted(
            self.model, self._scoring_ds("train", "validation")))
        # a figure the slice cannot define (one class only) is None and is left out: it never counts as a best
        res = {f"{t}_{k}": v for t, m in split_scoring.tower_metrics(labels, logits, weights).items()
               for k, v in m.items() if k in ("auc", "logloss") and v is not None}
        write_scalars(self.writers["validation"], p.global_step, res)
        log.info("epoch %d validation: %s", p.epoch, {k: round(float(v), 5) for k, v in res.items()})
        auc = res.get(selection_key(self.t.mode))
        if auc is not None and auc > p.best_auc + 1e-6:
            p.best_auc, p.best_epoch, p.bad_epochs = auc, p.epoch, 0
            self.best.save(checkpoint_number=p.global_step)
        else:
            p.bad_epochs += 1
        if self.t.per_tower_early_stopping and self.t.mode == "rocket":
            self._booster_early_stopping(p, res.get("booster_auc"))
        patience = self.t.early_stopping_patience
        return patience > 0 and p.bad_epochs >= patience

    def _booster_early_stopping(self, p: Progress, auc: float | None) -> None:
        """Per-tower early stopping: once the booster's own validation AUC has not improved for `patience`
        epochs its optimizer's learning rate goes to 0 (frozen; the rate is optimizer state, so the freeze is
        checkpointed and survives --resume) while the light net keeps learning from its hint."""
        if auc is not None and auc > p.booster_best_auc + 1e-6:
            p.booster_best_auc, p.booster_bad_epochs = auc, 0
            return
        p.booster_bad_epochs += 1
        if p.booster_bad_epochs >= max(1, self.t.early_stopping_patience) and not p.booster_frozen:
            self.model.booster_optimizer.learning_rate.assign(0.0)
            p.booster_frozen = 1
            log.info("epoch %d: booster validation AUC stalled at %.5f; booster frozen", p.epoch,
                     p.booster_best_auc)

    def _finish(self, p: Progress, start: float, stopped_early: bool, resumed_at: int | None) -> None:
        fits = self._calibrate()  # before the final checkpoint: load_run, and so every export, restores it
        final = tf.train.CheckpointManager(tf.train.Checkpoint(model=self.model),
                                           self.role.write_dir(self.paths.root, "checkpoints/final"),
                                           max_to_keep=1)
        final.save(checkpoint_number=p.global_step)  # on every worker (saves may be collective)
        if not self.role.is_chief:
            return
        eval_files = self._usable_shards("eval")
        labels, logits, weights = self._guard(eval_files, lambda: split_scoring.score_dataset_weighted(
            self.model, self._scoring_ds("eval", "all")))
        towers = split_scoring.tower_metrics(labels, logits, weights)
        write_scalars(self.writers["eval"], p.global_step,
                      {f"{t}_{k}": v for t, m in towers.items() for k, v in m.items() if k != "rows" and v is not None})
        exported = self._export()
        # steps x batch over-counts each epoch's last partial batch; a pass cannot exceed the split's rows
        rows = self.cache.train.rows if self.cache else \
            artifacts.read_stats(self.data_dir).train_rows * (1.0 - self.fraction)
        examples = min(p.examples, int(round(rows * (p.epoch + (1 if p.step_in_epoch else 0)))))
        metrics = {
            "mode": self.t.mode, "name": self.cfg.name, "eval": towers, "steps": p.global_step,
            "epochs_completed": p.epoch, "examples": examples, "train_seconds": round(p.wall_seconds, 3),
            "examples_per_sec": round(examples / p.wall_seconds, 1) if p.wall_seconds > 0 else None,
            "wall_seconds": round(time.monotonic() - start, 3), "batch_size": self.t.batch_size,
            "validation": {**self.holdout.describe(), "metric": selection_key(self.t.mode),
                           "rows": self.cache.validation.rows if self.cache else None,
                           "cached": self.cache is not None,
                           "best": p.best_auc if p.best_epoch >= 0 else None,
                           "best_epoch": p.best_epoch if p.best_epoch >= 0 else None,
                           "booster_frozen": bool(p.booster_frozen)},
            "stopped_early": stopped_early, "resumed_from_step": resumed_at,
            "skipped_shards": [{"file": f, "error": e} for f, e in self.skipped_shards],
            "strategy": self.t.strategy, "num_workers": self.role.num_workers, "towers": exported,
            "train_rows": artifacts.read_stats(self.data_dir).train_rows,
            "steps_per_execution": self.steps_per_execution,
            "calibration": self._calibration_report(fits, labels, logits, weights),
        }
        write_json(self.paths.metrics, metrics)

    def _calibrate(self) -> dict[str, tuple[calibration.PlattFit, dict | None]]:
        """Fit each tower's Platt map on the validation slice (models.calibration) and store it in the model.

        Returns {tower: (fit, its before/after figures on the slice or None)}. Every worker scores the same
        slice with the same weights, so all of them hold the same parameters when the final checkpoint is
        saved. Platt sees the sampled distribution (the slice is part of the sampled train split); the
        negative sampling correction log(r) is added on top in the graph, never fitted."""
        with self.strategy.scope():
            maps = self.model.attach_calibration()
        labels = logits = weights = None
        if self.t.validation_fraction > 0:
            labels, logits, weights = self._guard(self.train_files, lambda: split_scoring.score_dataset_weighted(
                self.model, self._scoring_ds("train", "validation")))
        fits: dict[str, tuple[calibration.PlattFit, dict | None]] = {}
        for t in self.model.tower_names:
            z = None if logits is None else logits[f"{t}_logit"]
            if self.t.calibration == "none":
                fit = calibration.identity("none", "train.calibration is 'none'")
            elif z is None:
                fit = calibration.identity("identity", "train.validation_fraction is 0: no validation slice to "
                                                       "fit the calibration on")
                log.warning("calibration of the %s net: identity kept: %s", t, fit.reason)
            else:
                fit = calibration.fit_platt(labels, z, weights)
            maps.towers[t].set(fit)
            fits[t] = (fit, None if z is None else calibration.summary(labels, z, fit.a, fit.b, weights))
            log.info("calibration of the %s net: %s a=%.5f b=%.5f (validation %s)", t, fit.method, fit.a, fit.b,
                     fits[t][1])
        return fits

    def _calibration_report(self, fits: dict[str, tuple[calibration.PlattFit, dict | None]], labels,
                            logits: dict, weights) -> dict:
        """metrics.json "calibration": per tower the map, the validation figures it was fitted on, and the
        eval split's before (raw logit) / after (the served logit, sampling correction included)."""
        rate = self.spec.negative_sampling_rate
        out = {}
        for t, (fit, validation) in fits.items():
            z = logits[f"{t}_logit"]
            ev = calibration.summary(labels, z, fit.a, fit.b, weights, calibration.log_rate(rate))
            if rate < 1.0:  # what the sampling correction buys: the same Platt map without log(r)
                plain = calibration.summary(labels, z, fit.a, fit.b, weights)
                ev.update(calibration_without_sampling_correction=plain["calibration_after"],
                          logloss_without_sampling_correction=plain["logloss_after"])
            out[t] = {"a": fit.a, "b": fit.b, "method": fit.method, "reason": fit.reason,
                      "negative_sampling_rate": rate, "validation": validation, "eval": ev}
        return out

    def _export(self) -> dict[str, str]:
        from models.saved import save_tower

        out = {}
        for tower in self.model.tower_names:  # kd: the student's light only
            out[tower] = str(save_tower(self.model, tower, self.paths.tower(tower)))
        return out


def selection_key(mode: str) -> str:
    """The validation metric for early stopping / selection: the light net's AUC (it is what gets served),
    the booster's in booster-only runs."""
    return "booster_auc" if mode == "booster" else "light_auc"
