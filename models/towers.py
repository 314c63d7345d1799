"""Light towers (lr | fm | mlp) and booster towers (mlp | dcn | din); each maps Fields to ONE logit [N].

The light net must stay cheap to serve (the point of Rocket Launching), so its towers are shallow; the
booster may be as heavy as training affords. A tower owns only its dense layers; embedding tables live
in models.embeddings (shared bottom).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from feature_specs.schema import FeatureSpec
from models.config import TowerConfig
from models.embeddings import Fields


class Tower(tf.keras.layers.Layer):
    """Base: holds the config and the L2 on its kernels."""

    def __init__(self, cfg: TowerConfig, seed: int, **kw):
        super().__init__(**kw)
        self.cfg, self.seed = cfg, seed

    def _dense(self, units: int, activation: str | None = None, name: str | None = None) -> tf.keras.layers.Dense:
        self.seed += 1
        return tf.keras.layers.Dense(units, activation=activation, name=name,
                                     kernel_initializer=tf.keras.initializers.GlorotUniform(seed=self.seed))

    # True when the tower's first layer is one dense map of fields.flat(): it can then be applied to the user
    # and the item columns separately (split_logits), the user part once per score_candidates request.
    splits_first_layer = False

    def split_logits(self, parts: list[tuple[tf.Tensor, list[int]]],
                     kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
        """Logits [N] from column subsets of fields.flat(): (x [1 or N, k], its columns in the full layout).

        At least one part must have the N rows (batch-1 parts broadcast against it in the first layer's sum).
        `kernels`: the parts' first-layer kernel rows gathered ahead of time (split_dense).
        """
        raise NotImplementedError(f"{type(self).__name__} reads its fields jointly; it has no split first layer")

    def first_layer(self) -> tf.keras.layers.Layer:
        """The Dense-compatible layer split_logits splits (towers with splits_first_layer only)."""
        raise NotImplementedError(f"{type(self).__name__} has no split first layer")

    def l2_loss(self) -> tf.Tensor:
        kernels = [w for w in self.trainable_weights if "kernel" in w.name]
        if not self.cfg.l2 or not kernels:
            return tf.constant(0.0)
        return self.cfg.l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])


def split_dense(layer: tf.keras.layers.Dense, parts: list[tuple[tf.Tensor, list[int]]],
                kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
    """layer(concat of the parts in layout order) as a sum of per-part products with the kernel's matching rows.

    A batch-1 part (the user side) costs one row and broadcasts in the sum, so scoring N candidates pays
    the user's share of the first layer once; the result equals the layer on the broadcast concatenation.
    `kernels` (one per part, in order) are those rows gathered ahead of time, e.g. kept as variables by the
    export (models.saved), so a request does not gather them again.
    """
    kernel = layer.kernel if kernels is None else None
    out = None
    for i, (x, cols) in enumerate(parts):
        if kernels is not None:
            w = kernels[i]
        else:
            w = kernel if cols == list(range(int(kernel.shape[0]))) else tf.gather(kernel, cols)
        y = tf.matmul(x, w)
        out = y if out is None else out + y
    if layer.use_bias:
        out = out + layer.bias
    return layer.activation(out) if layer.activation is not None else out


class MLP(tf.keras.layers.Layer):
    """Dense-ReLU stack (with dropout); the shared body of mlp / dcn / din towers.

    `first_layer` replaces dense_0 by a given layer of the same width (interval sharing: models/interval.py); it
    alone accepts `frozen_shared` (read the shared variables through stop_gradient).
    """

    def __init__(self, tower: Tower, hidden: tuple[int, ...], dropout: float,
                 first_layer: tf.keras.layers.Layer | None = None, **kw):
        super().__init__(**kw)
        if first_layer is not None and not hidden:
            raise ValueError("a given first layer needs at least one hidden layer")
        layers = []
        for i, h in enumerate(hidden):
            if i == 0 and first_layer is not None:
                tower.seed += 1  # the deeper layers keep the seeds they get without it
                layers.append(first_layer)
            else:
                layers.append(tower._dense(h, "relu", name=f"dense_{i}"))
        self.layers_ = layers
        self.shares_first = first_layer is not None
        self.dropout = [tf.keras.layers.Dropout(dropout, seed=tower.seed + i) for i in range(len(hidden))] \
            if dropout else []

    def call(self, x: tf.Tensor, training: bool = False, first: int = 0, frozen_shared: bool = False) -> tf.Tensor:
        for i, layer in enumerate(self.layers_[first:], start=first):
            x = layer(x, frozen_shared=True) if frozen_shared and i == 0 and self.shares_first else layer(x)
            if self.dropout:
                x = self.dropout[i](x, training=training)
        return x


class LRTower(Tower):
    """Logistic regression on the concatenated embeddings."""

    def __init__(self, cfg: TowerConfig, seed: int = 0, **kw):
        super().__init__(cfg, seed, **kw)
        self.out = self._dense(1, name="logit")

    splits_first_layer = True

    def call(self, fields: Fields, training: bool = False) -> tf.Tensor:
        return tf.squeeze(self.out(fields.flat()), -1)

    def split_logits(self, parts: list[tuple[tf.Tensor, list[int]]],
                     kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
        return tf.squeeze(split_dense(self.out, parts, kernels), -1)

    def first_layer(self) -> tf.keras.layers.Layer:
        return self.out


class FMTower(Tower):
    """Factorization machine: a linear term plus 0.5 * sum((sum v)^2 - sum v^2) over fields of equal dim."""

    def __init__(self, cfg: TowerConfig, seed: int = 0, **kw):
        super().__init__(cfg, seed, **kw)
        self.linear = self._dense(1, name="linear")

    def call(self, fields: Fields, training: bool = False) -> tf.Tensor:
        logit = tf.squeeze(self.linear(fields.flat()), -1)
        for v in fields.by_dim().values():  # [N, F, d]; fields of different dims interact within their dim
            s = tf.reduce_sum(v, axis=1)
            logit += 0.5 * tf.reduce_sum(tf.square(s) - tf.reduce_sum(tf.square(v), axis=1), axis=1)
        return logit


class MLPTower(Tower):
    """first_layer: a first hidden layer shared with the other tower (interval sharing), else its own dense_0."""

    def __init__(self, cfg: TowerConfig, seed: int = 0, first_layer: tf.keras.layers.Layer | None = None, **kw):
        super().__init__(cfg, seed, **kw)
        self.body = MLP(self, cfg.hidden, cfg.dropout, first_layer=first_layer, name="mlp")
        self.out = self._dense(1, name="logit")

    splits_first_layer = True

    def call(self, fields: Fields, training: bool = False, frozen_shared: bool = False) -> tf.Tensor:
        x = self.body(fields.flat(), training=training, frozen_shared=frozen_shared)
        return tf.squeeze(self.out(x), -1)

    def split_logits(self, parts: list[tuple[tf.Tensor, list[int]]],
                     kernels: list[tf.Tensor] | None = None) -> tf.Tensor:
        if not self.body.layers_:
            return tf.squeeze(split_dense(self.out, parts, kernels), -1)
        # inference only (score_candidates): the first layer's dropout is the identity there
        return tf.squeeze(self.out(self.body(split_dense(self.body.layers_[0], parts, kernels), first=1)), -1)

    def first_layer(self) -> tf.keras.layers.Layer:
        return self.body.layers_[0] if self.body.layers_ else self.out


class DCNTower(Tower):
    """DCN-v2: `cross_layers` tfrs Cross layers on the concatenated fields, then the MLP."""

    def __init__(self, cfg: TowerConfig, seed: int = 0, **kw):
        super().__init__(cfg, seed, **kw)
        self.cross = [tfrs.layers.dcn.Cross(projection_dim=cfg.cross_low_rank, name=f"cross_{i}",
                                            kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 50 + i))
                      for i in range(cfg.cross_layers)]
        self.body = MLP(self, cfg.hidden, cfg.dropout, name="mlp")
        self.out = self._dense(1, name="logit")

    def call(self, fields: Fields, training: bool = False) -> tf.Tensor:
        x0 = x = fields.flat()
        for layer in self.cross:
            x = layer(x0, x)
        return tf.squeeze(self.out(self.body(x, training=training)), -1)


class DinAttention(tf.keras.layers.Layer):
    """DIN local activation: scores each behaviour against the target item, masked softmax, weighted sum."""

    def __init__(self, tower: Tower, hidden: tuple[int, ...], **kw):
        super().__init__(**kw)
        self.mlp = [tower._dense(h, "relu", name=f"att_{i}") for i, h in enumerate(hidden)]
        self.score = tower._dense(1, name="att_score")

    def call(self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        q = tf.broadcast_to(query[:, None, :], tf.shape(keys))
        h = tf.concat([q, keys, q - keys, q * keys], axis=-1)
        for layer in self.mlp:
            h = layer(h)
        scores = tf.squeeze(self.score(h), -1)  # [N, L]
        scores = tf.where(mask > 0, scores, tf.fill(tf.shape(scores), tf.constant(-1e9, scores.dtype)))
        weights = tf.nn.softmax(scores, axis=-1) * mask  # an empty sequence gets all-zero weights
        return tf.reduce_sum(weights[:, :, None] * keys, axis=1)


def din_pairs(spec: FeatureSpec) -> list[tuple[str, str]]:
    """(behaviour sequence, target item feature) pairs the booster can attend over: same table, item side."""
    feats = spec.for_tower("booster")
    pairs = []
    for s in (f for f in feats if f.kind == "sequence"):
        target = next((f for f in feats if f.kind == "categorical" and f.side == "item"
                       and f.vocab_owner == s.vocab_owner), None)
        if target is not None:
            pairs.append((s.name, target.name))
    return pairs


class DINTower(Tower):
    """DIN-style booster: attention-pooled behaviour sequences appended to the fields, then the MLP."""

    def __init__(self, cfg: TowerConfig, spec: FeatureSpec, seed: int = 0, **kw):
        super().__init__(cfg, seed, **kw)
        self.pairs = din_pairs(spec)
        if not self.pairs:
            raise ValueError(f"{spec.path}: booster kind 'din' needs a booster sequence feature sharing its "
                             f"embedding with an item-side categorical feature (shares_embedding_with); none found")
        self.attention = [DinAttention(self, cfg.attention_hidden, name=f"din_{s}") for s, _ in self.pairs]
        self.body = MLP(self, cfg.hidden, cfg.dropout, name="mlp")
        self.out = self._dense(1, name="logit")

    def call(self, fields: Fields, training: bool = False) -> tf.Tensor:
        attended = [att(fields.field(t), fields.sequences[s].values, fields.sequences[s].mask)
                    for att, (s, t) in zip(self.attention, self.pairs)]
        x = tf.concat([fields.flat(), *attended], axis=1)
        return tf.squeeze(self.out(self.body(x, training=training)), -1)


# tower kind -> its class, per role: the kinds a config may use (models.config validates against these keys)
LIGHT_TOWERS = {"lr": LRTower, "fm": FMTower, "mlp": MLPTower}
BOOSTER_TOWERS = {"mlp": MLPTower, "dcn": DCNTower, "din": DINTower}


def build_tower(role: str, cfg: TowerConfig, spec: FeatureSpec, seed: int = 0,
                first_layer: tf.keras.layers.Layer | None = None) -> Tower:
    """The tower for `role` ("light" | "booster"); its layer name is the role (variables scoped `role/`).

    first_layer (mlp only): the tower's first hidden layer, shared with the other tower (interval sharing).
    """
    table = LIGHT_TOWERS if role == "light" else BOOSTER_TOWERS
    if cfg.kind not in table:
        raise ValueError(f"model.{role}.kind: {cfg.kind!r} is not one of {', '.join(table)}")
    if first_layer is not None:
        if cfg.kind != "mlp":
            raise ValueError(f"model.{role}.kind: a shared first layer needs an mlp tower, got {cfg.kind!r}")
        return MLPTower(cfg, seed, first_layer=first_layer, name=role)
    if cfg.kind == "din":
        return DINTower(cfg, spec, seed, name=role)
    return table[cfg.kind](cfg, seed, name=role)
