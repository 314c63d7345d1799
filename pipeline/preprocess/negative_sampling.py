"""Negative down-sampling of the TRAIN split (spec `negative_sampling_rate`), deterministic and counted.

CTR logs are mostly negatives; keeping each train negative with probability r (and every positive) cuts the
training cost by about (1 - r) of the data for little loss of signal. The kept/dropped decision is a salted
blake2b of the validated row (like the split's `hash_fraction`, with a salt of its own so it is independent
of the split), so a re-run keeps exactly the same rows. The eval split is never sampled: it must measure the
production distribution. A model trained on sampled data predicts q = CTR on sampled data; the exported
graph undoes it with p = q / (q + (1 - q) / r), i.e. logit += log(r) (models.calibration).
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.preprocess.counting import global_value
from pipeline.preprocess.record_layout import RecordLayout
from pipeline.preprocess.train_eval_split import hash_fraction

SALT = "negative_sampling"
DROPPED = "sampled_out"  # counts key prefix: rows read == written + rejected + sampled out
KEPT_NEGATIVES = "negatives_kept"


def sampling_seed(split_seed: int) -> str:
    """The hash salt: derived from the split's seed but different from it, so the two draws are independent."""
    return f"{SALT}:{split_seed}"


def row_key(record: Sequence) -> str:
    """A canonical text of a validated record (values in record_layout's order): stable across processes and Python
    versions (str of str/float/int, tuples joined), unlike repr of arbitrary unicode or hash()."""
    parts = []
    for v in record:
        if v is None:
            parts.append("\x00")
        elif isinstance(v, tuple):
            parts.append("\x1d".join(str(t) for t in v))
        else:
            parts.append(str(v))
    return "\x1e".join(parts)


def keep_negative(seed: str, record: Sequence, rate: float) -> bool:
    """Whether a negative record survives down-sampling at `rate` (probability `rate`, deterministically)."""
    return rate >= 1.0 or hash_fraction(seed, row_key(record)) < rate


def sampling_rule(rate: float, split_seed: int) -> dict:
    """What manifest.json records about the sampling (the counts are added by the driver)."""
    return {"negative_sampling_rate": rate, "applies_to": "train", "seed": sampling_seed(split_seed),
            "rule": "a train row with label 0 is kept iff blake2b(f'{seed}\\x1f{row}', 8 bytes) / 2**64 < rate "
                    "(row = the validated record's values); positives and the eval split are always kept",
            "correction": "exported logit += log(rate), i.e. p = q / (q + (1 - q) / rate)"}


class SampleNegatives(beam.DoFn):
    """TRAIN records -> the records kept; every positive is kept, a negative with probability `rate`.

    Dropped and kept negatives are counted per bundle into the job's `counts` output (the manifest's
    accounting) and into Beam counters `negatives_dropped` / `negatives_kept` (the runner's monitoring).
    """

    COUNTS = "counts"

    def __init__(self, layout: RecordLayout, rate: float, split_seed: int, split: str = "train"):
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"negative_sampling_rate must be in (0, 1], got {rate}")
        self._label, self._rate, self._seed, self._split = layout.role("label"), rate, sampling_seed(
            split_seed), split
        self._dropped = self._kept = 0
        self._dropped_counter = Metrics.counter("rocketctr", "negatives_dropped")
        self._kept_counter = Metrics.counter("rocketctr", "negatives_kept")

    def start_bundle(self):
        self._dropped = self._kept = 0

    def process(self, record):
        if record[self._label] == 1.0:
            yield record
        elif keep_negative(self._seed, record, self._rate):
            self._kept += 1
            yield record
        else:
            self._dropped += 1

    def finish_bundle(self):
        dropped, kept, self._dropped, self._kept = self._dropped, self._kept, 0, 0
        self._dropped_counter.inc(dropped)
        self._kept_counter.inc(kept)
        yield beam.pvalue.TaggedOutput(self.COUNTS, global_value((f"{DROPPED}:{self._split}", dropped)))
        yield beam.pvalue.TaggedOutput(self.COUNTS, global_value((f"{KEPT_NEGATIVES}:{self._split}", kept)))
