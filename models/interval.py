"""Interval sharing (the paper's second scheme): the towers share the embedding tables PLUS their first hidden layer.

One `SharedDense` (variables `shared/interval_dense/...`) is that layer: its kernel rows for the fields both towers
read, and the bias. Each MLP tower's first layer is a `TowerFirstLayer` that reads it and adds a bias-free kernel of
its own for the fields only that tower reads (none in the shipped specs, where both towers read every feature, so
there the two first layers are literally the same kernel and bias).

Ownership: the layer is shared (named shared/, listed in RocketModel.shared_variables, in both towers' export
paths), but the tower holds it in an untracked box, so no tower's variables, L2 or trainable flag include it; ONE
optimizer updates it once per step: the light net's. Why not the embedding optimizer, the owner of the shared
tables: that one is tuned for sparse rows (Adagrad 0.05), and on a dense kernel it wrecked both nets (simulator,
300k rows, 2 seeds: light AUC 0.659 vs 0.703 under the light optimizer, booster 0.664 vs 0.707, light alone
0.688). The light optimizer is the one that trains the light net's first layer under bottom sharing, so switching the scheme changes what is shared, not how the served net's first layer is optimized. Not
the booster's: per-tower early stopping sets the booster's rate to 0, which would freeze the served net's first
layer with it. The light export tracks the layer through TowerPath (models/rocket.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.embeddings import Embedder


class _Untracked:
    """A box Keras attribute tracking does not follow: the tower reads the shared layer but must not own it."""

    def __init__(self, value):
        self.value = value


class SharedDense(tf.keras.layers.Layer):
    """The shared first layer's variables: kernel [columns of the fields both towers read, units] and bias [units]."""

    def __init__(self, rows: int, units: int, seed: int, **kw):
        super().__init__(name="interval_dense", **kw)
        self.rows, self.units = rows, units
        with tf.name_scope("shared"), tf.name_scope("interval_dense"):  # created now: named shared/..., not rocket/...
            self.kernel = self.add_weight(name="kernel", shape=(rows, units), dtype=tf.float32, trainable=True,
                                          initializer=tf.keras.initializers.GlorotUniform(seed=seed))
            self.bias = self.add_weight(name="bias", shape=(units,), dtype=tf.float32, trainable=True,
                                        initializer="zeros")


class TowerFirstLayer(tf.keras.layers.Layer):
    """One tower's first hidden layer (ReLU) under interval sharing.

    Dense-compatible (kernel, bias, use_bias, activation), so models.towers.split_dense runs score_candidates'
    split first layer on it unchanged. `frozen_shared` reads the shared variables through stop_gradient: the
    hint path's copy of the light net when the hint must stay out of the shared parts (hint_into_shared off).
    """

    use_bias = True

    def __init__(self, shared: SharedDense, rows: list[int], own_rows: int, seed: int, **kw):
        super().__init__(name="dense_0", **kw)
        self._shared = _Untracked(shared)
        # kernel row of each input column (an array: Keras would wrap a list attribute as trackable state)
        self.rows, self.own_rows, self.seed = np.asarray(rows, np.int64), own_rows, seed
        # the tower's columns are the shared kernel's rows in order (both towers read the same fields): no gather
        self.identity = own_rows == 0 and list(rows) == list(range(shared.rows))
        self.activation = tf.nn.relu
        self.own_kernel = None

    @property
    def shared(self) -> SharedDense:
        return self._shared.value

    def build(self, input_shape) -> None:
        if self.own_rows:  # the fields only this tower reads: its own rows, named <tower>/mlp/dense_0/own_kernel
            self.own_kernel = self.add_weight(name="own_kernel", shape=(self.own_rows, self.shared.units),
                                              dtype=tf.float32, trainable=True,
                                              initializer=tf.keras.initializers.GlorotUniform(seed=self.seed))
        super().build(input_shape)

    def _kernel(self, frozen: bool) -> tf.Tensor:
        k = tf.stop_gradient(self.shared.kernel) if frozen else self.shared.kernel
        if self.identity:
            return k
        if self.own_kernel is not None:
            k = tf.concat([k, self.own_kernel], axis=0)
        return tf.gather(k, self.rows)

    @property
    def kernel(self) -> tf.Tensor:
        return self._kernel(False)

    @property
    def bias(self) -> tf.Variable:
        return self.shared.bias

    def call(self, x: tf.Tensor, frozen_shared: bool = False) -> tf.Tensor:
        bias = tf.stop_gradient(self.bias) if frozen_shared else self.bias
        return self.activation(tf.matmul(x, self._kernel(frozen_shared)) + bias)


def build_interval(embedder: Embedder, towers: tuple[str, ...], units: int,
                   seed: int) -> tuple[SharedDense, dict[str, TowerFirstLayer]]:
    """The shared layer and each tower's first layer over it.

    Rows are assigned by feature name (Embedder.flat_layout): a field both towers read has the same rows of the
    shared kernel in both, whatever its column in each tower's input; a field one tower reads alone gets rows of
    that tower's own kernel.
    """
    layouts = {t: embedder.flat_layout(t) for t in towers}
    common = [n for n in layouts[towers[0]] if all(n in layouts[t] for t in towers)]
    if not common:
        raise ValueError(f"model.sharing 'interval': the towers {', '.join(towers)} read no feature in common "
                         f"(spec {embedder.spec.name}); there is no first layer to share")
    shared_rows, n_shared = {}, 0
    for name in common:
        shared_rows[name], n_shared = n_shared, n_shared + layouts[towers[0]][name][1]
    shared = SharedDense(n_shared, units, seed)
    first = {}
    for i, t in enumerate(towers):
        width = sum(dim for _, dim in layouts[t].values())
        rows, own = [0] * width, 0
        for name, (col, dim) in layouts[t].items():
            if name in shared_rows:
                start = shared_rows[name]
            else:
                start, own = n_shared + own, own + dim
            rows[col:col + dim] = range(start, start + dim)
        first[t] = TowerFirstLayer(shared, rows, own, seed + 1 + i)
    return shared, first
