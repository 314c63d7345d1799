"""The Beam jobs write only under their output path: no scratch folder in the working directory or next to the
inputs, nothing left over (staging, _parts, temporaries) in the output. What a remote runner needs: a worker
can write nowhere the driver reads except the output path."""

from __future__ import annotations

from pathlib import Path

import pytest

import eval_fixtures as fx
from pipeline.evaluate.eval_job import evaluate
from pipeline.preprocess.preprocess_job import preprocess
from pipeline.simulator.click_logs import simulate

IN_PROCESS = ["--runner=FnApiRunner"]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root -> (size, mtime_ns): any write shows up as a difference."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_preprocess_writes_only_its_artifacts_under_the_output(tmp_path, empty_cwd):
    raw = tmp_path / "raw"
    sim = simulate(300, raw, seed=1)
    before = tree(raw)
    out = tmp_path / "elsewhere" / "prep"
    preprocess("synthetic", [str(f) for f in sim.click_files], str(out), beam_args=IN_PROCESS, num_shards=1)
    assert list(empty_cwd.iterdir()) == [] and tree(raw) == before
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    top = {f for f in files if "/" not in f}
    assert top == {"manifest.json", "spec.yaml", "stats.json", "train-00000-of-00001.tfrecord.gz",
                   "eval-00000-of-00001.tfrecord.gz"}
    others = [f for f in files if "/" in f]
    assert others and all(f.startswith("vocab/") and f.endswith(".txt") or f.startswith("rejected/rejected-")
                          for f in others), others
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["rejected", "vocab"]  # no _staging, no temp


def test_eval_writes_only_its_report_under_the_output(tmp_path, empty_cwd):
    data = fx.write_data(tmp_path / "data", fx.frame(rows=120, users=8), shards=1)
    model = fx.save_linear(tmp_path / "models" / "3", 1.5, -1.0)
    before = {"data": tree(data), "models": tree(tmp_path / "models")}
    out = evaluate(model, data, tmp_path / "elsewhere" / "eval", slice_feature="pid", beam_args=IN_PROCESS)
    assert list(empty_cwd.iterdir()) == []
    assert {"data": tree(data), "models": tree(tmp_path / "models")} == before
    assert sorted(p.name for p in Path(out).rglob("*")) == ["calibration.png", "metrics.json", "report.md",
                                                            "roc.png", "user_auc_hist.png"]
    assert not (Path(out) / "_parts").exists()
