"""The packed serving layout: one tensor per side and dtype instead of one per feature, derived from a spec.

Why: in a Python server every input tensor of a request has a fixed cost (decoding, validation, conversion
to an eager tensor, the function call's argument handling) that is larger than the light net's own work on
it, and `score_candidates` takes one tensor per feature (38 on the synthetic spec). `score_packed` takes the
same features as at most four tensors:

  user_tokens   string [1, k]   user + context categorical values, then their sequences
  user_numeric  float  [1, m]   user + context numeric features
  item_tokens   string [N, k']  the candidates' categorical values, then their sequences
  item_numeric  float  [N, m']  the candidates' numeric features

Inside a block the columns follow the spec's feature order, categoricals before sequences. A sequence takes
exactly max_length columns: its most recent max_length tokens, left-aligned and padded with PAD ("").
A block without any feature is not an input. The export records the layout in its metadata
(assets.extra/rocketctr.json, "packed"), so a client packs from the spec or from the metadata alone.
`pack` (numpy, client side) and `unpack` (graph side) are the only two places that read the layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from feature_specs.example_fields import PAD
from feature_specs.schema import FeatureSpec

SIGNATURE = "score_packed"
# group -> (the spec sides it packs, its batch size: the user side is one row, the items N)
GROUPS: dict[str, tuple[tuple[str, ...], int | None]] = {"user": (("user", "context"), 1), "item": (("item",), None)}
DTYPES = {"string": tf.string, "float": tf.float32}


@dataclass(frozen=True)
class PackedColumn:
    """One feature's columns inside a packed input: [start, start + width)."""

    feature: str
    kind: str  # categorical | sequence | numeric
    start: int
    width: int


@dataclass(frozen=True)
class PackedInput:
    """One input of score_packed: some sides' features of one dtype, side by side."""

    name: str  # user_tokens | user_numeric | item_tokens | item_numeric
    group: str  # user | item
    dtype: str  # string | float
    batch: int | None  # 1 for the user group, None (N) for the items
    columns: tuple[PackedColumn, ...]

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def tensor_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([self.batch, self.width], DTYPES[self.dtype], name=self.name)

    def to_dict(self) -> dict:
        """The metadata form (assets.extra/rocketctr.json); `layout_from_dict` reads it back."""
        return {"name": self.name, "group": self.group, "dtype": self.dtype, "batch": self.batch,
                "shape": [self.batch if self.batch is not None else -1, self.width],
                "columns": [{"feature": c.feature, "kind": c.kind, "start": c.start, "width": c.width}
                            for c in self.columns]}


def packed_layout(spec: FeatureSpec) -> tuple[PackedInput, ...]:
    """The packed inputs of `spec`; empty when the spec has no item feature (no candidates to score)."""
    if not spec.by_side("item"):
        return ()
    out = []
    for group, (sides, batch) in GROUPS.items():
        feats = [f for f in spec.features if f.side in sides]
        for dtype, kinds in (("string", ("categorical", "sequence")), ("float", ("numeric",))):
            cols, start = [], 0
            for kind in kinds:
                for f in (f for f in feats if f.kind == kind):
                    width = f.max_length if kind == "sequence" else 1
                    if width < 1:
                        raise ValueError(f"{spec.path}: sequence feature {f.name!r} needs a max_length >= 1 to be "
                                         f"packed (got {f.max_length})")
                    cols.append(PackedColumn(f.name, kind, start, width))
                    start += width
            if cols:
                name = f"{group}_{'tokens' if dtype == 'string' else 'numeric'}"
                out.append(PackedInput(name, group, dtype, batch, tuple(cols)))
    return tuple(out)


def packed_input_specs(spec: FeatureSpec) -> dict[str, tf.TensorSpec]:
    """score_packed's input signature."""
    return {p.name: p.tensor_spec() for p in packed_layout(spec)}


def layout_to_dict(layout: tuple[PackedInput, ...]) -> dict:
    return {"signature": SIGNATURE, "inputs": [p.to_dict() for p in layout]}


def layout_from_dict(doc: Mapping) -> tuple[PackedInput, ...]:
    """The layout from an export's metadata ("packed"): what a client needs to pack without the spec."""
    try:
        return tuple(PackedInput(d["name"], d["group"], d["dtype"], d["batch"],
                                 tuple(PackedColumn(c["feature"], c["kind"], int(c["start"]), int(c["width"]))
                                       for c in d["columns"]))
                     for d in doc["inputs"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"packed layout metadata is malformed (missing or bad {e}); expected "
                         f"{{'inputs': [{{name, group, dtype, batch, columns: [{{feature, kind, start, width}}]}}]}}"
                         ) from None


def unpack(layout: tuple[PackedInput, ...], packed: Mapping[str, tf.Tensor]
           ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Graph side: packed tensors -> (user/context features [1, ...], item features [N, ...]) as the model takes
    them (categorical / numeric [B], sequence [B, max_length]). The leading single columns of a block come out
    of one Unpack op, each sequence is one slice."""
    out: dict[str, dict[str, tf.Tensor]] = {g: {} for g in GROUPS}
    for p in layout:
        x = packed[p.name]
        single = [c for c in p.columns if c.kind != "sequence"]  # first in the block, one column each
        if [c.start for c in single] != list(range(len(single))) or any(c.width != 1 for c in single):
            raise ValueError(f"{p.name}: single-column features must come first, one column each (packed_layout)")
        if single:
            block = x if len(single) == len(p.columns) else x[:, :len(single)]
            out[p.group].update(zip((c.feature for c in single), tf.unstack(block, num=len(single), axis=1)))
        for c in p.columns[len(single):]:
            out[p.group][c.feature] = x[:, c.start:c.start + c.width]
    return out["user"], out["item"]


def pack(layout: tuple[PackedInput, ...], user: Mapping[str, np.ndarray], items: Mapping[str, np.ndarray]
         ) -> dict[str, np.ndarray]:
    """Client side: model-ready columns (categorical bytes [B], numeric float [B], sequence bytes [B, L] padded
    at the end with PAD, as score_candidates takes them) -> the packed inputs. `user` holds the user and context
    features at batch 1, `items` the item features at batch N. Sequences keep their last max_length positions
    (the model's own truncation)."""
    sides = {"user": user, "item": items}
    for p in layout:
        missing = [c.feature for c in p.columns if c.feature not in sides[p.group]]
        if missing:
            raise ValueError(f"{p.name}: feature(s) {missing} missing (the {p.group} side needs "
                             f"{[c.feature for c in p.columns]})")
    ref = next((p.columns[0].feature for p in layout if p.group == "item"), None)  # the items' row count
    rows = {"user": 1, "item": len(np.asarray(items[ref])) if ref is not None else 0}
    out = {}
    for p in layout:
        n = rows[p.group]
        if p.dtype == "string":
            block = np.full((n, p.width), PAD.encode(), dtype=object)
        else:
            block = np.empty((n, p.width), dtype=np.float32)
        for c in p.columns:
            v = np.asarray(sides[p.group][c.feature])
            want = 2 if c.kind == "sequence" else 1
            if v.ndim != want or v.shape[0] != n:
                raise ValueError(f"{p.name}: feature {c.feature!r} has shape {list(v.shape)}; expected "
                                 f"{[n] + ([None] if want == 2 else [])} ({c.kind}, {p.group} side"
                                 + (f", as many rows as {ref!r})" if p.group == "item" else ")"))
            try:
                if c.kind == "sequence":
                    v = v[:, -c.width:]
                    block[:, c.start:c.start + v.shape[1]] = v
                else:
                    block[:, c.start] = v
            except (TypeError, ValueError) as e:
                raise ValueError(f"{p.name}: feature {c.feature!r} ({c.kind}) cannot be packed as {p.dtype}: {e}"
                                 ) from None
        out[p.name] = block
    return out
