"""The numeric pre-transform whose output stats.json describes (numpy; Beam workers never load TensorFlow).

For a numeric feature, the value the model standardizes or bucketizes is clip(x) followed, for the log1p
transforms, by a sign-keeping log1p. The Beam analyzer computes mean/std/quantiles of exactly this value;
models/inputs.py applies the same function in TensorFlow, and a test checks the two agree.
"""

from __future__ import annotations

import numpy as np

from feature_specs.schema import Feature


def pre_transform(f: Feature, values) -> np.ndarray:
    """clip to [clip_min, clip_max], then sign(x) * log1p(|x|) when the transform starts with log1p."""
    x = np.asarray(values, dtype=np.float64)
    if f.clip_min is not None or f.clip_max is not None:
        x = np.clip(x, -np.inf if f.clip_min is None else f.clip_min, np.inf if f.clip_max is None else f.clip_max)
    if f.transform.startswith("log1p"):
        x = np.sign(x) * np.log1p(np.abs(x))
    return x
