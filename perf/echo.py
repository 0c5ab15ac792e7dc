"""The bare-waitress baseline: a WSGI app that answers every POST with the body it was sent.

`python -m perf.echo --serve --port P --threads N` serves it with waitress and nothing else: no Flask, no Redis,
no Celery; what the API achieves next to it is the cost of the application over the HTTP server. With `--flask`
the same echo is a one-route Flask app: the most any Flask view can answer on that server.
`python -m perf.echo [--quick]` (scenario `echo`) measures the baseline alone; `http` measures it beside /predict.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b"{}"
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def flask_app() -> Callable[..., Iterable[bytes]]:
    """The same echo as a Flask view and nothing else: what Flask itself costs per request."""
    from flask import Flask, Response, request

    flask = Flask("perf-echo")

    @flask.post("/echo")
    def echo() -> Response:
        return Response(request.get_data() or b"{}", mimetype="application/json")

    return flask.wsgi_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run the echo server (used by the scenarios)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--flask", action="store_true", help="serve the echo through a one-route Flask app")
    args, rest = parser.parse_known_args(argv)
    if not args.serve:
        from perf.http_bench import run_echo_only

        return run_echo_only(rest)
    from waitress import serve

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N" on every burst
    serve(flask_app() if args.flask else app, host="127.0.0.1", port=args.port, threads=args.threads,
          channel_timeout=60, connection_limit=1000, ident="perf-echo", _quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
