"""kill -9 in the middle of training, then --resume: the run ends where an uninterrupted one ends.

The resumed job restores weights, optimizer slots and progress, and skips the batches of the current epoch
that were already trained (the shuffled order is a pure function of the seed), so the final model should
match the uninterrupted run up to float non-determinism; the test allows 0.01 AUC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from models.config import config_to_dict
from models.train import train
from tests.train_helpers import REPO, fast_config, fixture_data


def _latest_step(ckpt_dir) -> int:
    steps = [int(p.name.split("-")[1].split(".")[0]) for p in ckpt_dir.glob("ckpt-*.index")]
    return max(steps, default=0)


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = fixture_data(tmp_path / "data")
    cfg = fast_config("rocket", epochs=2, checkpoint_every_steps=5, validation_fraction=0.1)
    reference = json.loads((train(cfg, data, tmp_path / "ref", verbose=0) / "metrics.json").read_text())

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": config_to_dict(cfg)}))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rocketctr.cli", "train", "--data", str(data), "--config", str(cfg_file),
           "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _latest_step(run / "checkpoints") < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _latest_step(run / "checkpoints")
    assert not (run / "metrics.json").exists() and killed_at >= 10

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr  # refuses to clobber the run without --resume
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert killed_at <= resumed["resumed_from_step"] < reference["steps"]
    assert resumed["steps"] == reference["steps"]
    for tower in ("light", "booster"):
        assert abs(resumed["eval"][tower]["auc"] - reference["eval"][tower]["auc"]) < 0.01, (resumed, reference)
        assert abs(resumed["eval"][tower]["logloss"] - reference["eval"][tower]["logloss"]) < 0.01
