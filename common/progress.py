"""Progress you can watch: the one reporter of every long job (training steps, Beam rows, bench and tune trials).

A batch job on a cluster runs without a TTY and often with --quiet, yet it must still say, at a fixed interval,
how far it is, how fast it goes and when it will end. So the reporter writes one plain line per interval
(default 10 s, `ROCKETCTR_PROGRESS_SECONDS` or `rocketctr --progress-seconds`) to stderr; on a terminal it
draws one self-overwriting bar instead. Pure Python (no TensorFlow, no Beam) so every package can use it; the
clock and the stream are injectable so the interval logic is tested without sleeping.

    rep = ProgressReporter("train", total=1200, unit="steps")
    rep.update(done, fields=lambda: {"loss": 0.41})   # cheap when no line is due: fields are not evaluated
    rep.finish()                                       # always prints the final line
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

INTERVAL_ENV = "ROCKETCTR_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0
BAR_INTERVAL = 0.5  # a terminal bar redraws at most this often
BAR_WIDTH = 20

Fields = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


def default_interval() -> float:
    """Seconds between progress lines: $ROCKETCTR_PROGRESS_SECONDS, else 10 (a bad value is an error, not a
    silent default, so a typo in a manifest does not turn the lines off)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{INTERVAL_ENV}={text!r}: expected a number of seconds > 0")
    return value


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m: short enough for a progress line."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_rate(per_second: float | None, unit: str) -> str:
    """Per second when at least one a second, else per minute or per hour (trials are slow, rows are fast)."""
    if per_second is None:
        return f"- {unit}/s"
    for scale, suffix in ((1.0, "s"), (60.0, "min")):
        if per_second * scale >= 1.0:
            break
    else:
        scale, suffix = 3600.0, "h"
    v = per_second * scale
    return f"{v:,.0f} {unit}/{suffix}" if v >= 100 else f"{v:.3g} {unit}/{suffix}"


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):  # bool included
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def format_fields(fields: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {format_value(v)}" for k, v in fields.items())


class ProgressMeter:
    """Done / total, rate and ETA of one job; formatting only, no output (bench and tune print its text
    through their own echo). `advance(timed=False)` counts work that took no time (a reused trial), so it
    shortens the ETA without inflating the rate."""

    def __init__(self, name: str, total: int | None = None, unit: str = "items", *,
                 clock: Callable[[], float] = time.monotonic, start: int = 0) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress {name!r}: total must be >= 0 or None, got {total}")
        self.name, self.total, self.unit, self.clock = name, total, unit, clock
        self.done = start
        self._timed = 0  # units done by this process that took time (the rate's numerator)
        self._t0 = clock()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def update(self, done: int) -> None:
        """Absolute position (a training step); everything since the start counts toward the rate."""
        self._timed += done - self.done
        self.done = done

    def advance(self, n: int = 1, *, timed: bool = True) -> None:
        self.done += n
        if timed:
            self._timed += n

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def rate(self) -> float | None:
        """Units per second since the start (None before any time passed or any timed unit was done)."""
        t = self.elapsed()
        return self._timed / t if t > 0 and self._timed > 0 else None

    def eta(self) -> float | None:
        r = self.rate()
        if self.total is None or r is None:
            return None
        return max(0, self.total - self.done) / r

    def position(self) -> str:
        """`1,234/10,000 steps (12.3%)`, or `1,234 steps` when the total is unknown."""
        if self.total is None:
            return f"{self.done:,} {self.unit}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%)"

    def timing(self) -> str:
        """`45.6 steps/s, elapsed 27s, ETA 3m12s` (no ETA without a total)."""
        parts = [format_rate(self.rate(), self.unit), f"elapsed {format_duration(self.elapsed())}"]
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)

    def line(self, fields: Mapping[str, Any] | None = None) -> str:
        extra = format_fields(fields) if fields else ""
        return f"[{self.name}] {self.position()}, {self.timing()}" + (f", {extra}" if extra else "")

    def bar(self, fields: Mapping[str, Any] | None = None, width: int = 100) -> str:
        """One terminal line (no newline): a bar when the total is known, the rate, the ETA and the fields, cut
        to `width` characters (no elapsed time: the bar is read live)."""
        if self.total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
            head = f"[{self.name}] |{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {self.position()}"
        else:
            head = f"[{self.name}] {self.position()}"
        eta = self.eta()
        parts = [head, format_rate(self.rate(), self.unit)] + ([f"ETA {format_duration(eta)}"] if eta is not None
                                                               else [])
        if fields:
            parts.append(format_fields(fields))
        return ", ".join(parts)[:max(10, width - 1)]


class ProgressReporter(ProgressMeter):
    """A meter that prints: a line every `interval` seconds (no TTY, or bar=False as with --quiet), or a bar
    redrawn every BAR_INTERVAL on a TTY. The stream is resolved when writing (sys.stderr by default), so a
    reporter created before stderr is redirected still writes to the current one."""

    def __init__(self, name: str, total: int | None = None, unit: str = "items", *, interval: float | None = None,
                 bar: bool = True, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, start: int = 0) -> None:
        super().__init__(name, total, unit, clock=clock, start=start)
        self.interval = default_interval() if interval is None else float(interval)
        if not self.interval > 0:
            raise ValueError(f"progress {name!r}: interval must be > 0 seconds, got {interval}")
        self._stream = stream
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar_mode = bar and is_tty
        self._last = self._t0
        self._bar_open = False  # a bar is on screen without its newline
        self.lines = 0  # lines (or bar redraws) written so far

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def due(self) -> bool:
        """True when the next update should print (and restarts the interval)."""
        now = self.clock()
        if now - self._last >= (BAR_INTERVAL if self.bar_mode else self.interval):
            self._last = now
            return True
        return False

    def update(self, done: int, fields: Fields = None) -> str | None:  # type: ignore[override]
        """Move to `done`; print when a line is due. Returns what was printed (None: nothing)."""
        super().update(done)
        return self._maybe_print(fields)

    def advance(self, n: int = 1, *, timed: bool = True, fields: Fields = None) -> str | None:  # type: ignore[override]
        super().advance(n, timed=timed)
        return self._maybe_print(fields)

    def break_line(self) -> None:
        """End a bar that is on screen with a newline, so other output (a log line between two epochs) does
        not land on it; the next update draws a new bar below."""
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    def finish(self, fields: Fields = None) -> str:
        """The final line, always printed (the bar is completed and ends with a newline)."""
        return self._print(self._resolve(fields), final=True)

    def _maybe_print(self, fields: Fields) -> str | None:
        return self._print(self._resolve(fields)) if self.due() else None

    @staticmethod
    def _resolve(fields: Fields) -> Mapping[str, Any] | None:
        return fields() if callable(fields) else fields

    def _print(self, fields: Mapping[str, Any] | None, final: bool = False) -> str:
        out = self.stream
        if self.bar_mode:
            width = shutil.get_terminal_size((100, 20)).columns
            text = self.bar(fields, width)
            out.write("\r" + text.ljust(width - 1) + ("\n" if final else ""))
            self._bar_open = not final
        else:
            text = self.line(fields) + (" (done)" if final else "")
            out.write(text + "\n")
        out.flush()
        self.lines += 1
        return text
