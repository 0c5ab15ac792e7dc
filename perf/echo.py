"""The bare-waitress baseline: a WSGI app that answers every POST with the JSON it was sent.

`python -m perf.echo --serve --port P --threads N` serves it with waitress (the API's HTTP_THREADS
and keep-alive), and nothing else: no Flask, no Redis, no Celery. What the API achieves next to it
shows the cost of the application over the HTTP server on the same machine in the same run. With
`--flask` the same echo is a one-route Flask app: the most any Flask view can answer on that server.

`python -m perf.echo [--quick]` (scenario `echo`) measures the baseline alone; the `http` scenario
measures it next to /predict.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devtools.processes import ManagedProcess

DEFAULT_THREADS = 16
DEFAULT_KEEPALIVE_S = 60


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b"{}"
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def flask_app() -> Callable[..., Iterable[bytes]]:
    """The same echo as a Flask view, and nothing else: what Flask itself costs per request, before any
    work of the API's (no JSON parsing, no validation, no logging)."""
    from flask import Flask, Response, request

    flask = Flask("perf-echo")

    @flask.post("/echo")
    def echo() -> Response:
        return Response(request.get_data() or b"{}", mimetype="application/json")

    return flask.wsgi_app


def serve(port: int, threads: int, keepalive_s: int, flask: bool = False) -> None:
    from waitress import serve as waitress_serve

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N" on every burst
    waitress_serve(flask_app() if flask else app, host="127.0.0.1", port=port, threads=threads,
                   channel_timeout=keepalive_s, connection_limit=1000, ident="perf-echo", _quiet=True)


def echo_process(log_dir: Path, threads: int, keepalive_s: int = DEFAULT_KEEPALIVE_S,
                 flask: bool = False) -> tuple[ManagedProcess, int]:
    """The echo server (`flask`: the Flask echo) as a ManagedProcess (not started yet) on a free loopback
    port, and that port."""
    from devtools.processes import PYTHON, ManagedProcess
    from perf.common import child_env, free_loopback_port

    port = free_loopback_port()
    args = [PYTHON, "-m", "perf.echo", "--serve", "--port", str(port), "--threads", str(threads),
            "--keepalive-s", str(keepalive_s), *(["--flask"] if flask else [])]
    return ManagedProcess("flask-echo" if flask else "echo", args, child_env({}), log_dir), port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run the echo server (used by the scenarios)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--keepalive-s", type=int, default=DEFAULT_KEEPALIVE_S)
    parser.add_argument("--flask", action="store_true", help="serve the echo through a one-route Flask app")
    args, rest = parser.parse_known_args(argv)
    if args.serve:
        if not args.port:
            parser.error("--serve needs --port")
        serve(args.port, args.threads, args.keepalive_s, flask=args.flask)
        return 0
    from perf.http_bench import run_echo_only

    return run_echo_only(rest)


if __name__ == "__main__":
    sys.exit(main())
