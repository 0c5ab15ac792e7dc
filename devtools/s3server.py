"""`python devtools/s3server.py [-H HOST] [-p PORT]`: moto's S3 as a local S3-compatible server, S3 alone.

The fallback where SeaweedFS does not install (its wheel is x86_64 Linux only), or with LOCAL_S3=moto
(devtools/services.py chooses). A mock: it accepts any signature.

`moto_server` serves every AWS service moto mocks, and works out which one each request is for: it lists
moto's packages on disk and matches the Host header against every service's URL patterns, per request,
under one process-wide lock: a quarter of the server's time under a burst of claims. Here the same moto S3
application (`create_backend_app("s3")`) is served directly, by the werkzeug server and request handler
`moto_server` uses.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)

    def _stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    app = create_backend_app("s3")
    app.debug = False  # moto turns Flask's debug mode on: tracebacks in responses, and slower
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
