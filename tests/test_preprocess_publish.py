"""Publishing the preprocessing artifacts (pipeline.preprocess.staged_artifacts + manifest): the analysis results
are staged by a DoFn, promoted only afterwards, and the folder counts as finished only once manifest.json exists."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from feature_specs import artifacts
from pipeline.preprocess import manifest
from pipeline.preprocess.analyze import LABEL_KEY
from pipeline.preprocess.staged_artifacts import WriteStagedArtifacts

VOCAB = {"user_id": [("u2", 3), ("u1", 1)], "pid": [("p1", 4)]}
NUMERIC = {LABEL_KEY: (4, 0, 0.25, 0.75, 0.0, 1.0), "price": (4, 1, 2.0, 8.0, 0.0, 4.0)}
COUNTS = {"rows_in": 5, "written:train": 4, "rejected:bad_label": 1}
RULE = {"method": "hash_group", "eval_fraction": 0.2}


def stage(out: str) -> None:
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        side = {name: p | f"Side[{name}]" >> beam.Create(list(items.items()))
                for name, items in (("vocab", VOCAB), ("numeric", NUMERIC), ("counts", COUNTS))}
        written = (p | "Once" >> beam.Create([None])
                   | beam.ParDo(WriteStagedArtifacts(manifest.staging_dir(out), ["user_id", "pid", "empty"],
                                                     ["price", "never_seen"]),
                                vocab=beam.pvalue.AsDict(side["vocab"]), numeric=beam.pvalue.AsDict(side["numeric"]),
                                boundaries=beam.pvalue.AsDict(p | "NoBounds" >> beam.Create([])),
                                counts=beam.pvalue.AsDict(side["counts"]),
                                rule=beam.pvalue.AsSingleton(p | "Rule" >> beam.Create([RULE]))))
        assert_that(written, equal_to([3]))


def test_staged_then_promoted_then_finished_last(tmp_path):
    out = str(tmp_path / "prep")
    stage(out)
    assert manifest.read_staged_json(out, manifest.COUNTS) == COUNTS
    assert manifest.read_staged_json(out, manifest.SPLIT_RULE) == RULE
    manifest.promote(out, ["user_id", "pid", "empty"])
    manifest.publish_spec(out, "name: tiny\n")
    assert artifacts.read_vocab(out, "user_id") == VOCAB["user_id"] and artifacts.read_vocab(out, "empty") == []
    stats = artifacts.read_stats(out)
    assert (stats.train_rows, stats.label_rate, stats.vocab_sizes) == (4, 0.25, {"user_id": 2, "pid": 1, "empty": 0})
    assert (stats.numeric["price"].std, stats.numeric["never_seen"].count) == (pytest.approx(2 ** 0.5), 0)
    with pytest.raises(artifacts.ArtifactError, match="not a finished preprocessing output"):
        artifacts.read_manifest(out)  # everything is in place but the manifest: still unfinished
    manifest.write_manifest(out, {"rows": {"read": 5}})
    assert artifacts.read_manifest(out) == {"rows": {"read": 5}}
    assert sorted(p.name for p in (tmp_path / "prep").iterdir()) == ["manifest.json", "spec.yaml", "stats.json",
                                                                     "vocab"]


def test_rerun_clears_manifest_first_and_every_leftover(tmp_path):
    out = str(tmp_path / "prep")
    stage(out)
    manifest.write_manifest(out, {"old": True})
    stage(out)  # an interrupted re-run: staging (with its vocab/ folder) left behind next to the old manifest
    found = manifest.previous_outputs(out)
    assert found[0].endswith("manifest.json") and any("_staging" in f for f in found)
    manifest.clear_outputs(out)
    assert manifest.previous_outputs(out) == [] and list((tmp_path / "prep").iterdir()) == []


def test_missing_staged_results_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="counts.json"):
        manifest.read_staged_json(str(tmp_path), manifest.COUNTS)
