"""common.progress: the line format, the interval logic (an injected clock, no sleeping) and the TTY bar; and the
training job's progress callback (its total-steps arithmetic, and the final line of a real short run)."""

from __future__ import annotations

import io
import re

import pytest

from common.progress import (INTERVAL_ENV, ProgressMeter, ProgressReporter, default_interval, format_duration,
                             format_rate)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_and_rates_are_short_and_readable():
    assert [format_duration(s) for s in (0, 12.4, 65, 3599, 3600 * 2 + 7 * 60)] == ["0s", "12s", "1m05s", "59m59s",
                                                                                  "2h07m"]
    assert format_rate(12345.6, "rows") == "12,346 rows/s"
    assert format_rate(2.5, "steps") == "2.5 steps/s"
    assert format_rate(0.05, "trials") == "3 trials/min"  # slow work reads per minute, then per hour
    assert format_rate(1 / 7200, "runs") == "0.5 runs/h"
    assert format_rate(None, "rows") == "- rows/s"


def test_line_has_position_rate_eta_and_fields():
    clock = Clock()
    m = ProgressMeter("train", total=1000, unit="steps", clock=clock)
    clock.t += 50
    m.update(250)
    assert m.rate() == 5.0 and m.eta() == 150.0
    assert m.line({"loss": 0.412345, "light_auc": 0.7, "note": None}) == (
        "[train] 250/1,000 steps (25.0%), 5 steps/s, elapsed 50s, ETA 2m30s, loss 0.4123, light_auc 0.7, note -")


def test_unknown_total_has_no_eta():
    clock = Clock()
    m = ProgressMeter("preprocess", unit="rows", clock=clock)
    clock.t += 10
    m.advance(120_000)
    assert m.eta() is None
    assert m.line() == "[preprocess] 120,000 rows, 12,000 rows/s, elapsed 10s"


def test_resumed_start_and_untimed_work_do_not_inflate_the_rate():
    clock = Clock()
    resumed = ProgressMeter("train", total=100, unit="steps", clock=clock, start=60)
    clock.t += 10
    resumed.update(70)
    assert resumed.rate() == 1.0 and resumed.eta() == 30.0  # 10 steps in 10 s, not 70
    trials = ProgressMeter("tune", total=10, unit="trials", clock=clock)
    trials.advance(4, timed=False)  # reused trials: done instantly
    assert trials.rate() is None and trials.eta() is None
    clock.t += 60
    trials.advance()
    assert trials.rate() == pytest.approx(1 / 60) and trials.eta() == pytest.approx(5 * 60)


def test_lines_come_once_per_interval_and_fields_are_evaluated_only_then():
    clock, out, calls = Clock(), io.StringIO(), []

    def fields():
        calls.append(clock.t)
        return {"loss": 0.5}

    rep = ProgressReporter("train", total=100, unit="steps", interval=10, stream=out, clock=clock)
    assert not rep.bar_mode  # a StringIO is no terminal
    printed = []
    for step in range(1, 101):
        clock.t += 0.5
        printed.append(rep.update(step, fields=fields))
    emitted = [p for p in printed if p is not None]
    assert len(emitted) == 5 and len(calls) == 5  # t = 10, 20, ..., 50 s
    assert emitted[0] == "[train] 20/100 steps (20.0%), 2 steps/s, elapsed 10s, ETA 40s, loss 0.5"
    final = rep.finish(fields)
    assert final.endswith("loss 0.5 (done)") and "100/100 steps (100.0%)" in final
    assert out.getvalue().splitlines() == [*emitted, final] and rep.lines == 6


def test_a_tty_gets_one_bar_redrawn_in_place():
    clock, out = Clock(), Tty()
    rep = ProgressReporter("train", total=10, unit="steps", interval=10, stream=out, clock=clock)
    assert rep.bar_mode
    for step in range(1, 11):
        clock.t += 1
        rep.update(step)
    rep.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended only by finish
    draws = text.rstrip("\n").split("\r")[1:]
    assert len(draws) == 11  # every update (1 s >= the bar's 0.5 s) plus the final one
    assert draws[-1].startswith("[train] |" + "#" * 20 + "| 10/10 steps (100.0%), 1 steps/s, ETA 0s")
    assert re.match(r"\[train\] \|#{10}\.{10}\| 5/10 steps \(50\.0%\), 1 steps/s, ETA 5s", draws[4])
    epochs, clock2 = Tty(), Clock()
    rep = ProgressReporter("train", total=4, unit="steps", stream=epochs, clock=clock2)
    clock2.t += 1
    rep.update(1)
    rep.break_line()  # between two epochs: the bar is ended so a log line gets its own line
    rep.break_line()  # nothing on screen: no empty line
    clock2.t += 1
    rep.update(2)
    first, second = epochs.getvalue().split("\n")  # exactly one newline, between the two bars
    assert "1/4 steps (25.0%)" in first and "2/4 steps (50.0%)" in second
    quiet = ProgressReporter("train", total=10, interval=10, stream=Tty(), clock=clock, bar=False)
    assert not quiet.bar_mode  # --quiet: lines even on a terminal


def test_interval_comes_from_the_environment_and_bad_values_are_errors(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert default_interval() == 2.5 and ProgressReporter("x").interval == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ValueError, match=INTERVAL_ENV):
            default_interval()
    with pytest.raises(ValueError, match="interval must be > 0"):
        ProgressReporter("x", interval=0)
    with pytest.raises(ValueError, match="total must be >= 0"):
        ProgressMeter("x", total=-1)


def test_training_total_steps_span_epochs_resume_and_max_steps():
    from models.callbacks import Progress, ProgressCallback

    def total(epochs, max_steps, steps, global_step, step_in_epoch, epoch):
        cb = ProgressCallback(Progress(), 64.0, epochs, max_steps, reporter=ProgressReporter("t", interval=10))
        return cb.total_steps(steps, global_step, step_in_epoch, epoch)

    assert total(3, None, 50, 0, 0, 0) == 150            # fresh run: 3 epochs of 50 steps
    assert total(3, None, 30, 70, 20, 1) == 150          # resumed 20 steps into epoch 1 (70 done)
    assert total(3, 120, 50, 0, 0, 0) == 120             # max_steps caps it
    assert total(1, None, None, 0, 0, 0) is None         # a cluster: Keras does not know the epoch's length
    assert total(1, 500, None, 0, 0, 0) == 500


def test_a_quiet_training_run_prints_its_final_progress_line(tmp_path, capsys):
    """verbose=0 (as --quiet and the k8s Job run it): no bar, but the final line with steps, loss and AUCs."""
    import json

    from models.train import train
    from tests.train_helpers import fast_config, fixture_data

    data = fixture_data(tmp_path / "data", rows=1200)
    run = train(fast_config("rocket", epochs=2, validation_fraction=0.1), data, tmp_path / "run", verbose=0)
    steps = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] if run else None
    err = capsys.readouterr().err
    final = [line for line in err.splitlines() if line.startswith("[train]") and line.endswith("(done)")]
    assert len(final) == 1, err[-2000:]
    assert f"{steps}/{steps} steps (100.0%)" in final[0]
    for key in ("examples/s", "loss", "light_auc", "booster_auc"):
        assert f" {key} " in final[0], final[0]
