"""The HTTP server: waitress, adapted. Every reach into waitress's internals is here, and nowhere else.

    serve.py       `serve`: the server until SIGTERM, then the drain; the listener kept alive
    dispatcher.py  which thread answers a request: the I/O thread, the probe thread or the pool
    answers.py     the WSGI task (arrival time for the app, refusals without the app) and JSON error task
    channel.py     the connection: no busy polling, receive timestamps, probes answered on read
    loop.py        the main loop on one epoll set, accepting every waiting connection per turn
    prefork.py     several server processes on one port (HTTP_PROCESSES)
    timestamps.py  the kernel's receive time of a socket's data (SO_TIMESTAMP)

The admission policy these apply (the backlog bound) is `webapp.admission`, which knows nothing of waitress.

waitress internals this package touches, and why (waitress's public API has no hook for any of them):

- `create_server(_dispatcher=...)` and `ThreadedTaskDispatcher.add_task` / `.queue` / `.threads` /
  `.active_count` / `.lock`: to route probes away from the request threads, refuse requests at the
  backlog bound in the I/O thread, and know when the pool is idle during a drain.
- `server.channel_class`, `HTTPChannel.task_class` / `.error_task_class` / `.service` / `.handle_read` /
  `.writable` / `.recv` / `.requests` / `.request` / `.will_close` / `.close_when_flushed` /
  `.total_outbufs_len` / `.sendbuf_len` / `.last_activity` / `.adj`: to answer /healthz and refusals as
  soon as a request is read, stop the main loop from polling a connection that has nothing to send, read
  the kernel's receive timestamps, send large chunks, and close idle connections in a drain.
- `WSGITask.service` / `.execute` / `.get_environment`, `ErrorTask.execute` and the parser's
  `request.error` / `.path` / `.command` / `.headers`: to pass the arrival time to the app, answer
  refusals without the app, and answer waitress's own refusals with the contract's JSON error body.
- `server._map`, `wasyncore.readwrite`, `wasyncore.dispatcher.close`, `dispatcher._fileno`,
  `wasyncore._DISCONNECTED`, `handle_accept`, `accepting`, `handle_error`: the main loop itself (waitress's
  walks every connection on every turn), bulk accept, closing only the listeners in a drain, and keeping
  a listener open after an error.

`require_tested_waitress` refuses to start on a waitress outside TESTED_WAITRESS: these internals change
between releases (3.0.1, a security release, changed several of the methods overridden here).
"""

from __future__ import annotations

import sys
from importlib import metadata

from webapp.http.answers import ARRIVED_KEY

__all__ = ["ARRIVED_KEY", "TESTED_WAITRESS", "require_tested_waitress"]

#: waitress releases this package was tested with (the pin in requirements.txt).
TESTED_WAITRESS = frozenset({"3.0.2"})


def require_tested_waitress(version: str | None = None) -> None:
    """Exit with one line on stderr unless the installed waitress (or `version`) is one that was tested."""
    version = version or metadata.version("waitress")
    if version not in TESTED_WAITRESS:
        print(f"waitress {version} is installed; this server was tested with waitress {', '.join(sorted(TESTED_WAITRESS))} "
              "only (install requirements.txt)", file=sys.stderr, flush=True)
        raise SystemExit(2)
