"""The shared bottom: concatenated embedding tables (one per part and dim) and the per-tower field view.

Why concatenated: one lookup per table for all of a tower's categorical and numeric features (ids shifted
by per-feature offsets) instead of one per feature keeps the step free of per-feature overhead, and the
gradient of each table stays one sparse IndexedSlices (Adagrad updates only the touched rows).

Which part owns a table follows the spec's `towers` lists: a table read by both towers is `shared/`
(the paper's parameter sharing), one read by a single tower belongs to that tower (`light/`, `booster/`),
so a light export never carries booster-only tables. With share_embeddings off every tower gets its
own copy of the tables it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tensorflow as tf

from feature_specs.schema import TOWERS, FeatureSpec
from models.inputs import Encoded, FeatureInputs, table_key

PARTS = ("shared", "light", "booster")


@dataclass(frozen=True)
class Slot:
    bank: str  # key of the EmbeddingBank
    offset: int  # first row of this table inside the bank


@dataclass(frozen=True)
class Block:
    """Some fields of one part stacked: values [N, k, d]."""

    names: tuple[str, ...]
    part: str
    values: tf.Tensor


@dataclass(frozen=True)
class SequenceEmbedding:
    values: tf.Tensor  # [N, L, d]
    mask: tf.Tensor  # [N, L] float, 1 = real token
    part: str


@dataclass(frozen=True)
class Fields:
    """What a tower sees: one [N, d] vector per feature (grouped in blocks) plus raw sequence embeddings."""

    blocks: tuple[Block, ...]
    sequences: dict[str, SequenceEmbedding]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for b in self.blocks for n in b.names)

    def flat(self) -> tf.Tensor:
        """[N, sum of dims]: every field concatenated (MLP / DCN / LR input)."""
        parts = [tf.reshape(b.values, [-1, b.values.shape[1] * b.values.shape[2]]) for b in self.blocks]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def by_dim(self) -> dict[int, tf.Tensor]:
        """dim -> [N, F_dim, dim] (FM interactions need equal dims)."""
        groups: dict[int, list[tf.Tensor]] = {}
        for b in self.blocks:
            groups.setdefault(int(b.values.shape[2]), []).append(b.values)
        return {d: v[0] if len(v) == 1 else tf.concat(v, axis=1) for d, v in groups.items()}

    def field(self, name: str) -> tf.Tensor:
        for b in self.blocks:
            if name in b.names:
                return b.values[:, b.names.index(name), :]
        raise KeyError(f"no field {name!r} in {self.names}")

    def part_of(self, name: str) -> str:
        return next(b.part for b in self.blocks if name in b.names)

    def stop_gradient(self, parts: tuple[str, ...]) -> "Fields":
        """The same values with the gradient blocked into the tables of `parts`."""
        blocks = tuple(replace(b, values=tf.stop_gradient(b.values)) if b.part in parts else b for b in self.blocks)
        seqs = {k: replace(s, values=tf.stop_gradient(s.values)) if s.part in parts else s
                for k, s in self.sequences.items()}
        return Fields(blocks, seqs)

    def columns(self, layout: dict[str, tuple[int, int]]) -> list[int]:
        """For each column of flat(), its column in the full layout (Embedder.flat_layout)."""
        return [layout[name][0] + j for b in self.blocks for name in b.names for j in range(layout[name][1])]

    def squared_norm(self) -> tf.Tensor:
        """[N] sum of squared field values (the embedding L2 on looked-up rows, sparse-friendly)."""
        return tf.add_n([tf.reduce_sum(tf.square(b.values), axis=[1, 2]) for b in self.blocks])


def pool(values: tf.Tensor, mask: tf.Tensor, how: str) -> tf.Tensor:
    """Masked pooling over [N, L, d]; an empty sequence pools to zeros (finite scores)."""
    m = mask[:, :, None]
    if how == "max":
        masked = tf.where(m > 0, values, tf.fill(tf.shape(values), tf.constant(-1e9, values.dtype)))
        return tf.where(tf.reduce_sum(mask, 1, keepdims=True) > 0, tf.reduce_max(masked, 1), 0.0)
    total = tf.reduce_sum(values * m, axis=1)
    if how == "sum":
        return total
    return total / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)


class EmbeddingBank(tf.keras.layers.Layer):
    """One concatenated table [rows, dim] named `<part>/embeddings_d<dim>`."""

    def __init__(self, part: str, dim: int, rows: int, seed: int, **kw):
        super().__init__(name=f"{part}_embeddings_d{dim}", **kw)
        self.part, self.dim, self.rows = part, dim, rows
        with tf.name_scope(part):
            self.table = self.add_weight(name=f"embeddings_d{dim}", shape=(rows, dim), dtype=tf.float32,
                                         initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed),
                                         trainable=True)

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.nn.embedding_lookup(self.table, ids)


def with_embedding_dim(spec: FeatureSpec, dim: int | None) -> FeatureSpec:
    """`spec` with every feature's embedding_dim set to `dim` (config model.embedding_dim); None: the spec's own.

    Applied once, where the model is built (models.rocket.build_model), so training, load_run and the export all
    build the same tables from the run's recorded config. Only the model's copy changes: the spec file and its
    hash (the data contract checked by resolve_spec, kd teachers and exports) stay those of the data.
    """
    if dim is None or all(f.embedding_dim == dim for f in spec.features):
        return spec
    return replace(spec, features=tuple(replace(f, embedding_dim=dim) for f in spec.features))


def table_parts(spec: FeatureSpec, share: bool) -> dict[str, dict[str, str]]:
    """tower -> table key -> part that owns the table the tower reads."""
    readers: dict[str, set[str]] = {}
    for f in spec.features:
        readers.setdefault(table_key(f), set()).update(f.towers)
    return {t: {table_key(f): ("shared" if share and readers[table_key(f)] >= set(TOWERS) else t)
                for f in spec.for_tower(t)} for t in TOWERS}


class Embedder(tf.keras.layers.Layer):
    """Owns the banks and maps each built tower's features to (bank, offset) slots."""

    def __init__(self, spec: FeatureSpec, inputs: FeatureInputs, towers: tuple[str, ...], share: bool, seed: int = 0,
                 _banks: dict | None = None, _slots: dict | None = None, **kw):
        super().__init__(**kw)
        self.spec, self.towers = spec, tuple(towers)
        if _banks is not None:
            self.banks, self._slots = dict(_banks), _slots
            return
        parts = table_parts(spec, share)
        layout: dict[tuple[str, int], list[str]] = {}
        for t in self.towers:
            for key, part in parts[t].items():
                keys = layout.setdefault((part, spec.feature(key).embedding_dim), [])
                if key not in keys:
                    keys.append(key)
        banks, slots = {}, {t: {} for t in self.towers}
        for i, ((part, dim), keys) in enumerate(sorted(layout.items(), key=lambda kv: (PARTS.index(kv[0][0]),
                                                                                     kv[0][1]))):
            offsets, rows = {}, 0
            for key in keys:
                offsets[key], rows = rows, rows + inputs.rows(key)
            bank_key = f"{part}_d{dim}"
            banks[bank_key] = EmbeddingBank(part, dim, rows, seed + i)
            for t in self.towers:
                for key in keys:
                    if parts[t].get(key) == part:
                        slots[t][key] = Slot(bank_key, offsets[key])
        self.banks, self._slots = banks, slots

    def view(self, tower: str) -> "Embedder":
        """Only the banks `tower` reads (same variables): what the tower's export tracks."""
        used = {s.bank for s in self._slots[tower].values()}
        return Embedder(self.spec, None, (tower,), False, _banks={k: v for k, v in self.banks.items() if k in used},
                        _slots={tower: self._slots[tower]}, name=f"{tower}_embedder")

    def parts_variables(self, part: str) -> list[tf.Variable]:
        return [b.table for b in self.banks.values() if b.part == part]

    def fields(self, encoded: dict[str, Encoded], towers: tuple[str, ...] | None = None,
               once: frozenset[str] | set[str] = frozenset(), n: tf.Tensor | None = None,
               only: frozenset[str] | None = None) -> dict[str, Fields]:
        """Per tower, its fields; a table read by several towers is looked up once.

        `once` names features encoded at batch 1 (one user's side of score_candidates): they are looked up and
        pooled at batch 1 and only the embedded vectors are broadcast to the `n` rows of the other features,
        so a request pays the user side once instead of once per candidate. The values equal those of the
        features repeated n times before encoding. `only` restricts the call to some features (a tower's
        fields for a part of its inputs; see flat_layout).
        """
        towers = tuple(towers or self.towers)
        if once and n is None:
            raise ValueError("fields(once=...) needs n, the batch size to broadcast the batch-1 features to")
        needed = self._needed(towers, only)
        looked: dict[str, tuple[tuple[str, ...], tf.Tensor]] = {}
        seqs: dict[tuple[str, str], SequenceEmbedding] = {}
        for bank_key, names in needed.items():
            bank = self.banks[bank_key]
            flat = [m for m in names if self.spec.feature(m).kind != "sequence"]
            pieces: list[tuple[tuple[str, ...], bool, tf.Tensor]] = []  # (names, batch 1?, values [B, k, d])
            for group, single in _split(flat, once):
                pieces.append((group, single, self._lookup_flat(bank, list(group), encoded, towers)))
            for group, single in _split([m for m in names if m not in flat], once):
                pooled = []
                for m in group:
                    e = bank.lookup(encoded[m].ids + self._offset(bank_key, m, towers))
                    mask = encoded[m].mask
                    pooled.append(pool(e, mask, self.spec.feature(m).pooling))
                    if single:  # per-row attention (din) needs the rows; broadcasting embedded values is cheap
                        e, mask = _broadcast(e, n), _broadcast(mask, n)
                    seqs[(bank_key, m)] = SequenceEmbedding(e, mask, bank.part)
                pieces.append((group, single, tf.stack(pooled, axis=1)))
            order = tuple(flat) + tuple(m for m in names if m not in flat)
            looked[bank_key] = (order, _assemble(pieces, order, n))
        return {t: self._tower_fields(t, looked, seqs) for t in towers}

    def _needed(self, towers: tuple[str, ...], only: frozenset[str] | None = None) -> dict[str, list[str]]:
        """bank -> feature names it serves to `towers` (spec order; only those in `only` when given)."""
        needed: dict[str, list[str]] = {}
        for f in self.spec.features:
            if only is not None and f.name not in only:
                continue
            for t in towers:
                if t in f.towers:
                    names = needed.setdefault(self._slots[t][table_key(f)].bank, [])
                    if f.name not in names:
                        names.append(f.name)
        return needed

    def flat_layout(self, tower: str) -> dict[str, tuple[int, int]]:
        """feature -> (first column, dim) inside `fields(...)[tower].flat()` over all the tower's features.

        What lets a tower apply its first dense layer to a subset of the fields (score_candidates' user side
        once, the item side per row): the subset's columns are these rows of the kernel.
        """
        out, col = {}, 0
        for bank_key, names in self._needed((tower,)).items():
            dim = self.banks[bank_key].dim
            seq = [m for m in names if self.spec.feature(m).kind == "sequence"]
            for m in [m for m in names if m not in seq] + seq:
                out[m], col = (col, dim), col + dim
        return out

    def flat_columns(self, tower: str, names: frozenset[str] | set[str]) -> list[int]:
        """The columns (of flat_layout) that `fields(..., only=names)[tower].flat()` holds, in its order: the
        kernel rows a split first layer multiplies that part with, known without building any tensor."""
        layout, cols = self.flat_layout(tower), []
        for names_in_bank in self._needed((tower,), frozenset(names)).values():
            seq = [m for m in names_in_bank if self.spec.feature(m).kind == "sequence"]
            for m in [m for m in names_in_bank if m not in seq] + seq:
                cols += range(layout[m][0], layout[m][0] + layout[m][1])
        return cols

    def _offset(self, bank_key: str, name: str, towers: tuple[str, ...]) -> int:
        key = table_key(self.spec.feature(name))
        return next(self._slots[t][key].offset for t in towers
                    if key in self._slots[t] and self._slots[t][key].bank == bank_key)

    def _lookup_flat(self, bank: EmbeddingBank, names: list[str], encoded: dict[str, Encoded],
                     towers: tuple[str, ...]) -> tf.Tensor:
        bank_key = f"{bank.part}_d{bank.dim}"
        offsets = [self._offset(bank_key, n, towers) for n in names]
        ids = tf.stack([encoded[n].ids for n in names], axis=1)
        if any(offsets):  # one add for the block instead of one per feature
            ids = ids + tf.constant(offsets, tf.int64)
        values = bank.lookup(ids)
        scales = [encoded[n].scale for n in names]
        if any(s is not None for s in scales):
            ones = tf.ones_like(next(s for s in scales if s is not None))
            values = values * tf.stack([ones if s is None else s for s in scales], axis=1)[:, :, None]
        return values

    def _tower_fields(self, tower: str, looked: dict, seqs: dict) -> Fields:
        blocks, sequences = [], {}
        for bank_key, (order, values) in looked.items():
            mine = tuple(n for n in order if tower in self.spec.feature(n).towers
                         and self._slots[tower][table_key(self.spec.feature(n))].bank == bank_key)
            if not mine:
                continue
            if mine != order:
                values = tf.gather(values, [order.index(n) for n in mine], axis=1)
            blocks.append(Block(mine, self.banks[bank_key].part, values))
            sequences.update({n: s for (b, n), s in seqs.items() if b == bank_key and n in mine})
        return Fields(tuple(blocks), sequences)


def _split(names: list[str], once: frozenset[str] | set[str]) -> list[tuple[tuple[str, ...], bool]]:
    """The non-empty groups of `names` (order kept): batch-1 features first, then the per-row ones."""
    groups = [(tuple(m for m in names if m in once), True), (tuple(m for m in names if m not in once), False)]
    return [g for g in groups if g[0]]


def _broadcast(t: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """A batch-1 tensor [1, ...] repeated to n rows (sequence embeddings and masks for per-row attention)."""
    return tf.broadcast_to(t, tf.concat([tf.reshape(n, [1]), tf.shape(t)[1:]], axis=0))


def _assemble(pieces: list[tuple[tuple[str, ...], bool, tf.Tensor]], order: tuple[str, ...],
              n: tf.Tensor | None) -> tf.Tensor:
    """Blocks [B, k, d] -> one [N, k, d] block with the fields in `order`.

    Batch-1 blocks are not broadcast, concatenated and then permuted (three copies of an [N, k, d] tensor):
    every output row is gathered in ONE pass (axis 0, whole rows) from the batch-1 vectors and the per-row
    vectors stacked as rows of one matrix.
    """
    got = tuple(m for names, _, _ in pieces for m in names)
    if not any(single for _, single, _ in pieces):
        out = pieces[0][2] if len(pieces) == 1 else tf.concat([v for _, _, v in pieces], axis=1)
        return out if got == order else tf.gather(out, [got.index(m) for m in order], axis=1)
    once = [(names, v) for names, single, v in pieces if single]
    rows = [(names, v) for names, single, v in pieces if not single]
    once_names = tuple(m for names, _ in once for m in names)
    row_names = tuple(m for names, _ in rows for m in names)
    dim = pieces[0][2].shape[-1]
    source = [tf.reshape(v, [-1, dim]) for _, v in once]  # rows 0..k1-1: the batch-1 vectors
    if not row_names:  # a tower reading no per-row feature in this table: just broadcast
        out = tf.concat(source, axis=0)[None] if len(source) > 1 else source[0][None]
        out = tf.broadcast_to(out, tf.stack([n, len(once_names), dim]))
        return out if once_names == order else tf.gather(out, [once_names.index(m) for m in order], axis=1)
    source += [tf.reshape(v, [-1, dim]) for _, v in rows]  # then row r's j-th vector at k1 + r * k2 + j
    base = [once_names.index(m) if m in once_names else len(once_names) + row_names.index(m) for m in order]
    stride = [0 if m in once_names else len(row_names) for m in order]
    r = tf.range(tf.cast(n, tf.int64), dtype=tf.int64)[:, None]
    idx = tf.constant(base, tf.int64) + r * tf.constant(stride, tf.int64)
    return tf.gather(tf.concat(source, axis=0), idx)
