"""Score a file of raw feature rows through a PredictionService, over gRPC or REST (the library behind
`rocketctr score`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_specs.schema import FeatureSpec
from serving.client import PredictClient


class ScoreError(ValueError):
    """The input file or its rows cannot be turned into a request; names the file / feature."""


def read_rows(path: str | Path) -> pd.DataFrame:
    """CSV with a header (every cell read as text, so ids like "007" survive) or JSONL (one object a line)."""
    p = Path(path)
    if not p.exists():
        raise ScoreError(f"{p}: no such file")
    try:
        if p.suffix in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(p, lines=True, dtype=False)
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=["", "NULL"])
    except ValueError as e:
        raise ScoreError(f"{p}: cannot read rows ({e})") from None
    if df.empty:
        raise ScoreError(f"{p}: no rows")
    return df


def score_rows(rows: pd.DataFrame, target: str, model_name: str, spec: FeatureSpec | None = None,
               signature: str = "predict_raw", version: int | None = None, tls=False,
               timeout: float = 10.0, protocol: str = "grpc") -> tuple[np.ndarray, list[str]]:
    """(ctr per row, columns the model does not use). score_candidates takes row 0's user/context side.
    `protocol`: "grpc" or "rest" (`target` is then the REST port)."""
    with PredictClient(target, model_name, spec=spec, tls=tls, timeout=timeout, version=version,
                       protocol=protocol) as client:
        layout = client.layout(signature)
        ignored = [c for c in rows.columns if c not in layout]
        try:
            if signature == "predict_raw":
                scores = client.predict_raw(rows)
            elif signature == "score_candidates":
                user = {k: rows[k].iloc[0] for k, c in layout.items() if c.batch1 and k in rows.columns}
                items = rows[[k for k, c in layout.items() if not c.batch1 and k in rows.columns]]
                missing = [k for k, c in layout.items() if c.batch1 and k not in rows.columns]
                if missing:
                    raise ScoreError(f"user/context feature(s) {missing} missing from the rows")
                scores = client.score_candidates(user, items)
            else:
                raise ScoreError(f"signature {signature!r}: use predict_raw or score_candidates for raw rows")
        except ValueError as e:
            raise ScoreError(str(e)) from None
    return scores, ignored
