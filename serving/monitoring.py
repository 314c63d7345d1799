"""Request / error / latency counters in Prometheus text format, and structured (JSON) logs.

Stdlib only: a scrape endpoint on its own port (http.server in a daemon thread) so the serving threads never
block on it, and counters updated under one lock (a dict update is far below the 1 ms budget).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_left
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    """Counters keyed by label tuples; a latency histogram per (method, model, signature)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = {}
        self._hist: dict[tuple, list] = {}  # key -> [bucket counts..., +Inf count, sum]
        self._loads: dict[tuple, int] = {}
        self._available: dict[str, int] = {}

    def observe(self, method: str, model: str, signature: str, code: str, seconds: float) -> None:
        key = (method, model, signature)
        with self._lock:
            self._requests[(*key, code)] = self._requests.get((*key, code), 0) + 1
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0] * (len(LATENCY_BUCKETS_S) + 2)
            h[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            h[-1] += seconds

    def model_load(self, model: str, outcome: str) -> None:
        with self._lock:
            self._loads[(model, outcome)] = self._loads.get((model, outcome), 0) + 1

    def set_available_version(self, model: str, version: int) -> None:
        with self._lock:
            self._available[model] = version

    def request_count(self, method: str | None = None, code: str | None = None) -> int:
        with self._lock:
            return sum(n for (m, _, _, c), n in self._requests.items()
                       if (method is None or m == method) and (code is None or c == code))

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines = ["# HELP rocketctr_requests_total gRPC requests by method, model, signature and status code.",
                 "# TYPE rocketctr_requests_total counter"]
        with self._lock:
            for (m, model, sig, code), n in sorted(self._requests.items()):
                lines.append(f'rocketctr_requests_total{{{_labels(method=m, model=model, signature=sig, code=code)}}} {n}')
            lines += ["# HELP rocketctr_request_errors_total gRPC requests that did not return OK.",
                      "# TYPE rocketctr_request_errors_total counter"]
            for (m, model, sig, code), n in sorted(self._requests.items()):
                if code != "OK":
                    lines.append(f'rocketctr_request_errors_total{{{_labels(method=m, model=model, signature=sig, code=code)}}} {n}')
            lines += ["# HELP rocketctr_request_latency_seconds Server-side handling time.",
                      "# TYPE rocketctr_request_latency_seconds histogram"]
            for (m, model, sig), h in sorted(self._hist.items()):
                base = _labels(method=m, model=model, signature=sig)
                cum = 0
                for le, n in zip((*LATENCY_BUCKETS_S, "+Inf"), h[:-1]):
                    cum += n
                    lines.append(f'rocketctr_request_latency_seconds_bucket{{{base},le="{le}"}} {cum}')
                lines.append(f"rocketctr_request_latency_seconds_sum{{{base}}} {h[-1]:.6f}")
                lines.append(f"rocketctr_request_latency_seconds_count{{{base}}} {cum}")
            lines += ["# HELP rocketctr_model_loads_total Version loads by outcome (ok | failed).",
                      "# TYPE rocketctr_model_loads_total counter"]
            for (model, outcome), n in sorted(self._loads.items()):
                lines.append(f'rocketctr_model_loads_total{{{_labels(model=model, outcome=outcome)}}} {n}')
            lines += ["# HELP rocketctr_model_version Latest AVAILABLE version per model.",
                      "# TYPE rocketctr_model_version gauge"]
            for model, v in sorted(self._available.items()):
                lines.append(f'rocketctr_model_version{{{_labels(model=model)}}} {v}')
        return "\n".join(lines) + "\n"


def _labels(**kv: str) -> str:
    return ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in kv.items())


class MetricsServer:
    """GET /metrics on host:port (port 0 = pick a free one; see .port)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes are not worth a log line each
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        doc.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def json_logger(name: str = "rocketctr.serving", level: int = logging.INFO) -> logging.Logger:
    """The serving logger with a JSON handler on stderr (added once, however many servers start)."""
    log = logging.getLogger(name)
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        h = logging.StreamHandler()
        h.setFormatter(JsonFormatter())
        log.addHandler(h)
    log.setLevel(level)
    return log
