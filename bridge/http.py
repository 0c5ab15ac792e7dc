"""The bridge's probe and metrics server on BRIDGE_METRICS_PORT: /metrics, /healthz, /readyz.

/metrics serves the registry it is given (the bridge's metrics, tasks.metrics.EXPORTED["bridge"]); /healthz
answers 200 while the process runs; /readyz answers 200 once the bridge has partitions assigned (and 503
while it drains). Served from a daemon thread; it never touches the consumer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tasks.logs import log_event

log = logging.getLogger(__name__)


class ProbeServer:
    def __init__(self, host: str, port: int, readiness: Callable[[], dict[str, str]], registry: CollectorRegistry) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif self.path == "/readyz":
                    checks = server.readiness()
                    ready = all(value == "ok" for value in checks.values())
                    self._json(200 if ready else 503, {"status": "ready" if ready else "not_ready", "checks": checks})
                else:
                    self._json(404, {"error": {"code": "not_found", "message": "No such path."}})

            def _json(self, status: int, body: object) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
                return None

        self.readiness = readiness
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])

    def start(self) -> ProbeServer:
        threading.Thread(target=self.httpd.serve_forever, name="probe-server", daemon=True).start()
        log_event(log, "metrics_listening", port=self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
