"""RocketModel: light and booster towers over a shared embedding bottom, all training modes in one class.

Modes: rocket (co-training with the hint), light / booster (one tower alone: the baselines), kd (the light
net against a frozen teacher: two-stage distillation). train_step uses one GradientTape and one optimizer
per part (embedding tables / light, which also owns interval sharing's first layer / booster), each applying
its own gradients inside the step, which is the pattern tf.distribute strategies support under Keras fit.
"""

from __future__ import annotations

import os

import tensorflow as tf

from feature_specs import derive
from feature_specs.schema import TOWERS, FeatureSpec
from models.config import MODE_TOWERS, RunConfig
from models.calibration import Calibration
from models.embeddings import Embedder, Fields, with_embedding_dim
from models.inputs import FeatureInputs, build_feature_inputs
from models.interval import SharedDense, build_interval
from models.losses import rocket_loss
from models.optimizers import Teacher, as_teacher, make_optimizer
from models.towers import build_tower

# Nothing here branches on tensor values; skipping AutoGraph's source rewriting cuts tracing time ~15x (measured on synthetic).
NO_AUTOGRAPH = tf.autograph.experimental.do_not_convert


class TowerPath(tf.Module):
    """Everything one tower's scoring needs (its encoders, the banks it reads, the tower, the shared layers it
    reads: interval sharing's first layer, which the tower itself does not own), nothing else."""

    def __init__(self, tower_name: str, inputs: FeatureInputs, embedder: Embedder, tower: tf.keras.layers.Layer,
                 shared: tuple[tf.keras.layers.Layer, ...] = ()):
        super().__init__(name=f"{tower_name}_path")
        self.tower_name, self.inputs, self.embedder, self.tower = tower_name, inputs, embedder, tower
        self.shared = list(shared)

    @NO_AUTOGRAPH
    def logits(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        enc = self.inputs.encode(features)
        return self.tower(self.embedder.fields(enc, (self.tower_name,))[self.tower_name], training=training)

    @NO_AUTOGRAPH
    def candidate_logits(self, user: dict[str, tf.Tensor], items: dict[str, tf.Tensor],
                         kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
        """Logits [N] of one user (batch-1 user/context inputs) against N candidates (item inputs).

        The user side is encoded, looked up and pooled once and broadcast as embedded vectors, which equals
        `logits` on the user's raw inputs repeated N times (what score_candidates promises) at the cost of
        one row instead of N. `kernels`: split_kernels(user) gathered ahead of time (the export keeps them).
        """
        once = tuple(n for n in self.inputs.names if n in user)
        per_row = tuple(n for n in self.inputs.names if n not in user)
        enc = self.inputs.encode(user, once) if once else {}  # (an empty `names` would mean all of them)
        if per_row:  # a tower may read no item feature at all; it still scores N rows
            enc.update(self.inputs.encode(items, per_row))
        if per_row and self.tower.splits_first_layer:
            return self._split_candidate_logits(enc, once, per_row, kernels)
        n = tf.shape(next(iter(items.values())))[0]
        fields = self.embedder.fields(enc, (self.tower_name,), once=frozenset(once), n=n)
        return self.tower(fields[self.tower_name], training=False)

    def _split_candidate_logits(self, enc: dict, once: tuple[str, ...], per_row: tuple[str, ...],
                                kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
        """The tower's first layer applied to the user's fields at batch 1 and the items' at batch N, summed.

        No [N, all fields] input is ever built: the user's share of the first layer is one row, and only the
        item columns are multiplied N times (at N=300 on the synthetic spec: a third of the dense work and
        none of the broadcast-and-gather copy).
        """
        layout = self.embedder.flat_layout(self.tower_name)
        parts = []
        for names in (once, per_row):
            if names:
                f = self.embedder.fields(enc, (self.tower_name,), only=frozenset(names))[self.tower_name]
                parts.append((f.flat(), f.columns(layout)))
        if kernels is not None and ([len(c) for _, c in parts] != [int(k.shape[0]) for k in kernels]
                                    or [c for _, c in parts] != self.split_columns(frozenset(once))):
            raise ValueError(f"{self.tower_name}: pre-split kernels with {[int(k.shape[0]) for k in kernels]} rows do "
                             f"not match this request's user/item parts of {[len(c) for _, c in parts]} columns")
        return self.tower.split_logits(parts, kernels)

    def split_columns(self, user: frozenset[str] | set[str]) -> list[list[int]]:
        """The first-layer kernel rows of the user part and of the item part (non-empty parts only) when the
        features in `user` come at batch 1: what candidate_logits multiplies each part with."""
        once = [n for n in self.inputs.names if n in user]
        per_row = [n for n in self.inputs.names if n not in user]
        return [self.embedder.flat_columns(self.tower_name, frozenset(names)) for names in (once, per_row) if names]

    def split_kernels(self, user: frozenset[str] | set[str]) -> list[tf.Tensor] | None:
        """The tower's first-layer kernel rows per part (split_columns), gathered now; None when the tower has
        no split first layer or reads no item feature (candidate_logits then takes the broadcast path)."""
        if not self.tower.splits_first_layer or all(n in user for n in self.inputs.names):
            return None
        kernel = self.tower.first_layer().kernel
        return [tf.gather(kernel, cols) for cols in self.split_columns(user)]

    @property
    def parts(self) -> list[tf.Module]:
        return [self.inputs, self.embedder, self.tower, *self.shared]


class _Holder:
    """A plain attribute box Keras does not track (caches, the teacher)."""

    def __init__(self, value):
        self.value = value


class RocketModel(tf.keras.Model):
    def __init__(self, spec: FeatureSpec, inputs: FeatureInputs, cfg: RunConfig, teacher: Teacher | None = None):
        super().__init__(name="rocket")
        mode = cfg.train.mode
        if mode not in MODE_TOWERS:
            raise ValueError(f"train.mode: {mode!r} is not one of {', '.join(MODE_TOWERS)}")
        if mode == "kd" and teacher is None:
            raise ValueError("train.mode 'kd' needs a teacher (a trained booster export or callable)")
        self.spec, self.cfg, self.mode = spec, cfg, mode
        self.tower_names = MODE_TOWERS[mode]
        self.feature_inputs = inputs
        self.embedder = Embedder(spec, inputs, self.tower_names, cfg.model.share_embeddings, cfg.train.seed,
                                 name="embedder")
        # interval sharing needs two towers to share with: light / booster / kd models build their own first layers
        first: dict[str, tf.keras.layers.Layer] = {}
        self.interval_layer: SharedDense | None = None
        if cfg.model.sharing == "interval" and self.tower_names == ("light", "booster"):
            self.interval_layer, first = build_interval(self.embedder, self.tower_names, cfg.model.light.hidden[0],
                                                        cfg.train.seed + 300)
        self.light = build_tower("light", cfg.model.light, spec, cfg.train.seed + 100, first.get("light")) \
            if "light" in self.tower_names else None
        self.booster = build_tower("booster", cfg.model.booster, spec, cfg.train.seed + 200, first.get("booster")) \
            if "booster" in self.tower_names else None
        self._teacher = _Holder(teacher)
        self._paths = _Holder({})
        self.hint_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="hint_step",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._tower_metrics = self._make_metrics()
        self._build_eagerly()

    # ---------------------------------------------------------------------------------- structure
    def _make_metrics(self) -> dict[str, tf.keras.metrics.Metric]:
        names = ["loss"]
        if "light" in self.tower_names:
            names += ["light_loss", "light_logloss"]
        if "booster" in self.tower_names:
            names += ["booster_loss", "booster_logloss"]
        if self.mode in ("rocket", "kd"):
            names += ["hint", "hint_weight"]
        if self.mode == "kd":
            names += ["teacher_logloss"]
        out = {n: tf.keras.metrics.Mean(name=n) for n in names}
        for t in self.tower_names + (("teacher",) if self.mode == "kd" else ()):
            out[f"{t}_auc"] = tf.keras.metrics.AUC(name=f"{t}_auc")
        return out

    def _build_eagerly(self) -> None:
        """Create every variable now, outside the model's name scope, so names start with shared/light/booster."""
        dummy = {}
        for name, ts in derive.model_input_specs(self.spec).items():
            shape = [2] if ts.shape.rank == 1 else [2, 1]
            dummy[name] = tf.fill(shape, derive.PAD) if ts.dtype == tf.string else tf.zeros(shape, tf.float32)
        fields = self.embedder.fields(self.feature_inputs.encode(dummy, self._input_names()))
        for t in self.tower_names:
            getattr(self, t)(fields[t])

    def _input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.spec.features if set(f.towers) & set(self.tower_names))

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return list(self._tower_metrics.values())

    @property
    def shared_variables(self) -> list[tf.Variable]:
        layer = list(self.interval_layer.variables) if self.interval_layer is not None else []
        return self.embedder.parts_variables("shared") + layer

    @property
    def light_variables(self) -> list[tf.Variable]:
        return (self.light.variables if self.light else []) + self.embedder.parts_variables("light")

    @property
    def booster_variables(self) -> list[tf.Variable]:
        return (self.booster.variables if self.booster else []) + self.embedder.parts_variables("booster")

    @property
    def embedding_variables(self) -> list[tf.Variable]:
        return [b.table for b in self.embedder.banks.values()]

    def set_tower_trainable(self, tower: str, trainable: bool) -> None:
        """Freeze / unfreeze a tower and its own tables (per-tower early stopping); shared tables stay live.

        Keras fit restores the trainable flags recorded at compile time, so the record is refreshed here (what
        compile() would do) and the train function dropped: the next fit retraces with the new groups.
        """
        layer = getattr(self, tower, None)
        if layer is None:
            raise ValueError(f"a model trained in mode {self.mode!r} has no {tower} tower")
        layer.trainable = trainable
        for bank in self.embedder.banks.values():
            if bank.part == tower:
                bank.trainable = trainable
        if getattr(self, "_is_compiled", False):
            # a plain set: Keras' attribute tracking would wrap the weak dict and break nest.flatten
            object.__setattr__(self, "_compiled_trainable_state", self._get_trainable_state())
        self.train_function = None

    def tower_path(self, tower: str) -> TowerPath:
        if tower not in self.tower_names:
            raise ValueError(f"a model trained in mode {self.mode!r} has no {tower} tower (has {self.tower_names})")
        if tower not in self._paths.value:
            names = tuple(f.name for f in self.spec.for_tower(tower))
            shared = (self.interval_layer,) if self.interval_layer is not None else ()
            self._paths.value[tower] = TowerPath(tower, self.feature_inputs.subset(names), self.embedder.view(tower),
                                                 getattr(self, tower), shared)
        return self._paths.value[tower]

    def attach_calibration(self) -> Calibration:
        """The per-tower served-logit maps a * z + b + log(r) (models.calibration), created at identity on
        first use. Attached after construction on purpose: a checkpoint without them (every periodic one, and
        runs from before calibration) restores under assert_existing_objects_matched unchanged, and a final
        checkpoint with them hands their values over when they are attached after the restore (TensorFlow's
        restore-on-create; models.run.load_run)."""
        if "calibration" not in self.__dict__:
            self.calibration = Calibration(self.tower_names, self.spec.negative_sampling_rate)
        return self.calibration

    def calibrated_logits(self, tower: str, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The logit the export serves for `tower`: calibrated and corrected for negative sampling."""
        return self.attach_calibration().towers[tower](self.tower_path(tower).logits(features))

    def light_logits(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.tower_path("light").logits(features)

    def booster_logits(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.tower_path("booster").logits(features)

    # ---------------------------------------------------------------------------------- forward / loss
    def _forward(self, features: dict[str, tf.Tensor], training: bool) -> tuple[dict, dict[str, Fields]]:
        fields = self.embedder.fields(self.feature_inputs.encode(features, self._input_names()))
        out = {f"{t}_logit": getattr(self, t)(fields[t], training=training) for t in self.tower_names}
        return out, fields

    @NO_AUTOGRAPH
    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        return self._forward(features, bool(training))[0]

    @NO_AUTOGRAPH
    def compute_losses(self, features: dict[str, tf.Tensor], labels: tf.Tensor, weights: tf.Tensor | None = None,
                       training: bool = False) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """(losses from models.losses.rocket_loss, logits) for one batch: what train_step differentiates."""
        loss_cfg = self.cfg.model.loss
        out, fields = self._forward(features, training)
        z_light, z_booster = out.get("light_logit"), out.get("booster_logit")
        if self.mode == "kd":
            z_booster = out["teacher_logit"] = self._teacher.value(features)
        z_hint = None
        # hint_into_shared protects a co-trained booster that reads the same tables (and, interval sharing, the
        # same first layer); a kd student's tables serve no one else, so there the hint always trains them
        # (blocking it cost KD its whole gain)
        shared_layer = self.interval_layer is not None
        if self.mode == "rocket" and z_booster is not None and not loss_cfg.hint_into_shared \
                and (shared_layer or any(b.part == "shared" for b in fields["light"].blocks)):
            frozen = {"frozen_shared": True} if shared_layer else {}
            z_hint = self.light(fields["light"].stop_gradient(("shared",)), training=training, **frozen)
        reg = [getattr(self, t).l2_loss() for t in self.tower_names]
        if self.cfg.model.embedding_l2:
            reg += [self.cfg.model.embedding_l2 * tf.reduce_mean(fields[t].squared_norm()) for t in self.tower_names]
        losses = rocket_loss(labels, z_light, z_booster, loss_cfg, self.hint_step, weights, z_hint,
                             include_booster_bce=self.mode != "kd", regularization=tf.add_n(reg))
        return losses, out

    # ---------------------------------------------------------------------------------- training
    def compile(self, optimizers: dict[str, tf.keras.optimizers.Optimizer] | None = None, **kwargs) -> None:
        """Per-part optimizers from cfg.train (or given: keys embedding / light / booster)."""
        t = self.cfg.train
        opts = optimizers or {"embedding": make_optimizer(t.embedding_optimizer, "embedding_optimizer"),
                              "light": make_optimizer(t.light_optimizer, "light_optimizer"),
                              "booster": make_optimizer(t.booster_optimizer, "booster_optimizer")}
        self.embedding_optimizer, self.light_optimizer, self.booster_optimizer = (
            opts["embedding"], opts["light"], opts["booster"])
        super().compile(optimizer=self.embedding_optimizer, **kwargs)
        for opt, variables in self._optimizer_groups():
            opt.build(variables)

    def _optimizer_groups(self) -> list[tuple[tf.keras.optimizers.Optimizer, list[tf.Variable]]]:
        """Disjoint groups: the embedding optimizer owns the tables, each tower's its own layers, and the light
        optimizer interval sharing's first layer (why: models/interval.py)."""
        groups = [(self.embedding_optimizer, [w for b in self.embedder.banks.values() for w in b.trainable_weights])]
        for t in self.tower_names:
            shared = self.interval_layer.trainable_weights if t == "light" and self.interval_layer is not None else []
            groups.append((getattr(self, f"{t}_optimizer"), getattr(self, t).trainable_weights + shared))
        return [(opt, vs) for opt, vs in groups if vs]

    @staticmethod
    def _unpack(data) -> tuple[dict, tf.Tensor, tf.Tensor]:
        x, y, w = tf.keras.utils.unpack_x_y_sample_weight(data)
        y = tf.reshape(tf.cast(y, tf.float32), [-1])
        w = tf.ones_like(y) if w is None else tf.reshape(tf.cast(w, tf.float32), [-1])
        return x, y, w

    @NO_AUTOGRAPH
    def train_step(self, data) -> dict[str, tf.Tensor]:
        x, y, w = self._unpack(data)
        groups = self._optimizer_groups()
        variables = [v for _, vs in groups for v in vs]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses, out = self.compute_losses(x, y, w, training=True)
            scaled = losses["total"] / float(replicas)  # per-replica mean; optimizers sum over replicas
        grads = tape.gradient(scaled, variables)
        i = 0
        for opt, vs in groups:
            opt.apply_gradients([(g, v) for g, v in zip(grads[i:i + len(vs)], vs) if g is not None])
            i += len(vs)
        self.hint_step.assign_add(1)
        return self._update_metrics(losses, out, y, w)

    @NO_AUTOGRAPH
    def test_step(self, data) -> dict[str, tf.Tensor]:
        x, y, w = self._unpack(data)
        losses, out = self.compute_losses(x, y, w, training=False)
        return self._update_metrics(losses, out, y, w)

    def _update_metrics(self, losses: dict, out: dict, y: tf.Tensor, w: tf.Tensor) -> dict[str, tf.Tensor]:
        m = self._tower_metrics
        m["loss"].update_state(losses["total"])
        if "hint" in m:
            m["hint"].update_state(losses["hint"])
            m["hint_weight"].update_state(losses["hint_weight"])
        for t in self.tower_names:
            bce = losses[f"{t}_bce"]
            m[f"{t}_logloss"].update_state(bce)
            m[f"{t}_loss"].update_state(bce + (losses["hint_weight"] * losses["hint"] if t == "light" else 0.0))
            m[f"{t}_auc"].update_state(y, tf.sigmoid(out[f"{t}_logit"]), sample_weight=w)
        if self.mode == "kd":  # the teacher's quality on the same batches: the bar the student is chasing
            m["teacher_logloss"].update_state(losses["booster_bce"])
            m["teacher_auc"].update_state(y, tf.sigmoid(out["teacher_logit"]), sample_weight=w)
        return {name: metric.result() for name, metric in m.items()}


def build_model(spec: FeatureSpec, data_dir: str | os.PathLike, cfg: RunConfig, teacher=None) -> RocketModel:
    """The model for cfg.train.mode, its input layer read from a preprocessing output folder.

    Call inside strategy.scope() when distributing. kd mode: `teacher` is a callable, a loaded SavedModel,
    a RocketModel, or a path (export or run dir); by default cfg.train.teacher_run.
    """
    towers = MODE_TOWERS.get(cfg.train.mode, TOWERS)
    names = tuple(f.name for f in spec.features if set(f.towers) & set(towers))
    if cfg.train.mode == "kd":
        teacher = as_teacher(teacher if teacher is not None else cfg.train.teacher_run, spec) \
            if (teacher is not None or cfg.train.teacher_run) else None
    spec = with_embedding_dim(spec, cfg.model.embedding_dim)  # after the teacher check: that uses the data's spec
    return RocketModel(spec, build_feature_inputs(spec, data_dir, names), cfg, teacher)
