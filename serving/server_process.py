"""`rocketctr serve` in a child process on free loopback ports: the one helper the demo, the serving bench and
the tests use to run a real server beside their client.

A separate process because that is how production runs it (client and server do not share an interpreter
lock, so latencies are honest). Ready means what a load balancer would wait for: the gRPC health service says
SERVING for the model (a version loaded and warmed up). The server's log goes to a file, never to a pipe
nobody drains (a chatty server would block on a full pipe). stop() always ends the process: SIGTERM (a
graceful stop), then SIGKILL after `stop_timeout`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from common.ports import free_ports
from serving.health import check

_REPO = str(Path(__file__).resolve().parents[1])
_BIND_ERRORS = ("could not bind", "Failed to bind", "Address already in use", "address already in use")


class ServerProcess:
    """Start with `with ServerProcess(base, name) as s:` (or start() / stop()); s.target is the gRPC
    HOST:PORT, s.rest_target the REST one (None with rest=False), s.metrics_port the Prometheus port."""

    def __init__(self, model_base: str | os.PathLike, model_name: str, *, args: Sequence[str] = (),
                 rest: bool = True, metrics: bool = False, log_path: str | os.PathLike | None = None,
                 timeout: float = 120.0, stop_timeout: float = 20.0):
        self.model_base, self.model_name = str(model_base), model_name
        self.args, self.rest, self.metrics = list(args), rest, metrics
        self.timeout, self.stop_timeout = timeout, stop_timeout
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="rocketctr-serve-",
                                                                               suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.port = self.rest_port = self.metrics_port = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_target(self) -> str | None:
        return f"127.0.0.1:{self.rest_port}" if self.rest_port else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "rocketctr.cli", "serve", "--model-base", self.model_base, "--model-name",
               self.model_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--rest-port", str(self.rest_port or 0)]
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port)]
        return cmd + self.args

    def start(self) -> "ServerProcess":
        """Launch and wait until SERVING; a port taken between choosing and binding it is retried (3 tries)."""
        for attempt in range(3):
            log_start = len(self.log_text())
            ports = free_ports(1 + self.rest + self.metrics)
            self.port = ports[0]
            self.rest_port = ports[1] if self.rest else None
            self.metrics_port = ports[-1] if self.metrics else None
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))}
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                self._wait_ready()
                break
            except RuntimeError:
                if attempt == 2 or not any(e in self.log_text()[log_start:] for e in _BIND_ERRORS):
                    raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        with grpc.insecure_channel(self.target) as channel:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"`rocketctr serve` exited with code {self.proc.returncode}; its log "
                                       f"({self.log_path}) ends with:\n{self.log_text()[-2000:]}")
                try:
                    if check(channel, self.model_name, timeout=1.0) == "SERVING":
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"`rocketctr serve` did not report SERVING for {self.model_name!r} in "
                                       f"{self.timeout:.0f} s; see {self.log_path}")
                time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after stop_timeout; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_log and exc[0] is None:
            self.log_path.unlink(missing_ok=True)
