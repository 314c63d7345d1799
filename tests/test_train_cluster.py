"""Two worker processes on 127.0.0.1 train with MultiWorkerMirroredStrategy (TF_CONFIG) and agree with a
single-process run.

Tolerance: both runs use the same global batch (each of the 2 workers gets half), the same seed and the same
initial weights, but not the same data order (each worker reads its own shard, so batches mix examples
differently), so their results differ like two training orders do; on this fixture that spread is about
0.01-0.02 eval AUC. The test requires |delta AUC| < 0.05 per tower, and both runs well above chance.
It also checks that only the chief wrote checkpoints, TensorBoard logs and the exports into RUN_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from common.ports import free_ports
from models.config import config_to_dict
from models.train import train
from tests.train_helpers import REPO, fast_config, fixture_data


@pytest.mark.slow
def test_two_workers_train_and_agree_with_one_process(tmp_path):
    data = fixture_data(tmp_path / "data")
    cfg = fast_config("rocket", epochs=2, validation_fraction=0.1)
    single = json.loads((train(cfg, data, tmp_path / "single", verbose=0) / "metrics.json").read_text())

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": config_to_dict(cfg)}))
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    run = tmp_path / "cluster"
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rocketctr.cli", "train", "--data", str(data), "--config", str(cfg_file),
             "--out", str(run), "--quiet", "--set", "train.strategy=multi_worker_mirrored"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    cluster = json.loads((run / "metrics.json").read_text())
    assert cluster["strategy"] == "multi_worker_mirrored" and cluster["num_workers"] == 2
    for tower in ("light", "booster"):
        a, b = single["eval"][tower]["auc"], cluster["eval"][tower]["auc"]
        assert a > 0.58 and b > 0.58, (tower, a, b)
        assert abs(a - b) < 0.05, (tower, a, b)
    # global batch is shared, so both runs take about the same number of steps
    assert abs(cluster["steps"] - single["steps"]) <= 0.15 * single["steps"] + 2
    assert (run / "towers" / "light" / "saved_model.pb").exists() and (run / "checkpoints" / "final").is_dir()
    assert not list(run.glob("worker*")) and len(list((run / "tb" / "train").glob("events.*"))) == 1


@pytest.mark.slow
def test_parameter_server_chief_worker_ps_on_localhost(tmp_path):
    """ParameterServerStrategy: a worker and a ps task (`rocketctr train` just serving) and the chief that
    trains, all as processes (connecting to a cluster changes a process's TF context for good, so the
    chief is not run inside pytest). Asynchronous, so only 'trains to a sane model' is checked."""
    data = fixture_data(tmp_path / "data")
    cfg = fast_config("rocket", epochs=2, validation_fraction=0.1, strategy="parameter_server")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": config_to_dict(cfg)}))
    chief, worker, ps = (f"127.0.0.1:{p}" for p in free_ports(3))
    cluster = {"chief": [chief], "worker": [worker], "ps": [ps]}
    run = tmp_path / "run"
    procs = {}
    try:
        for task in ("worker", "ps", "chief"):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})}
            procs[task] = subprocess.Popen(
                [sys.executable, "-m", "rocketctr.cli", "train", "--data", str(data), "--config", str(cfg_file),
                 "--out", str(run), "--quiet"], cwd=REPO, env=env, text=True,
                stdout=subprocess.PIPE if task == "chief" else subprocess.DEVNULL, stderr=subprocess.STDOUT)
        out = procs["chief"].communicate(timeout=600)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs["chief"].returncode == 0, out[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["strategy"] == "parameter_server" and m["steps"] > 0
    for tower in ("light", "booster"):
        assert m["eval"][tower]["auc"] > 0.58, m["eval"]
    assert (run / "towers" / "light" / "saved_model.pb").exists()
