"""Which thread answers a request: the I/O thread (/healthz, refusals, requests waitress could not parse),
a thread of its own (the other probes), or the pool of HTTP_THREADS request threads, behind the backlog
bound of `webapp.admission`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from waitress.task import ThreadedTaskDispatcher

from tasks.logs import now_ms
from webapp.admission import BacklogPolicy
from webapp.http.channel import QuietChannel

log = logging.getLogger(__name__)

FAST_PATHS = frozenset({"/healthz"})  # answered by the I/O thread
PROBE_PATHS = frozenset({"/readyz", "/metrics"})  # answered by the probe thread, never shed


class ProbeFirstDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, with probes first and a bounded backlog.

    Every request is stamped with its arrival (the kernel's receive time of its last bytes) as it is
    handed over; its deadline counts from then, not from when the I/O thread read it or a thread takes it.
    `GET /healthz` is answered by the I/O thread at once; the other probes (/readyz, /metrics) go to a
    thread of their own. A request `policy` refuses is answered 429 by the I/O thread (`MarkedTask`)."""

    def __init__(self, policy: BacklogPolicy, fast_threads: int = 1) -> None:
        super().__init__()
        self.set_thread_count(policy.threads)
        self.fast = ThreadedTaskDispatcher()
        self.fast.set_thread_count(fast_threads)
        self.policy = policy

    def add_task(self, task: Any) -> None:
        """Route a channel with a request ready. Runs in the I/O thread (or in the request thread that
        finished the previous request on the connection): nothing raised here may reach the listener,
        so whatever goes wrong, the request goes to waitress's own path and is answered there."""
        try:
            self._route(task)
        except Exception:
            log.exception("routing a request failed; handing it to waitress", extra={"event": "http_route_failed"})
            super().add_task(task)

    def _route(self, task: Any) -> None:
        requests = getattr(task, "requests", None)
        if not requests:
            super().add_task(task)
            return
        request = requests[0]
        inline = isinstance(task, QuietChannel) and threading.current_thread() is threading.main_thread()
        if request.error:
            # waitress could not parse it (bad request line or header, body over its limit): the
            # channel's error task answers it and closes the connection; no path, no app.
            if inline:
                task.serve_inline = True
            else:
                super().add_task(task)
            return
        if getattr(request, "arrived_ms", None) is None:
            # When the kernel received it (the socket's receive timestamp), else now: time spent unread in
            # the socket, while the I/O thread was behind, counts against the request's deadline.
            now = now_ms()
            request.arrived_ms = min(getattr(task, "received_at_ms", None) or now, now)
        if request.command == "GET" and request.path in FAST_PATHS:
            if inline:
                task.serve_inline = True  # answered by the I/O thread itself, right after it read the request
            else:
                self.fast.add_task(task)
        elif request.command == "GET" and request.path in PROBE_PATHS:
            self.fast.add_task(task)
        else:
            waiting = len(self.queue)
            self.policy.arrived(waiting, time.monotonic())
            if inline and self.policy.refuses(request.path, request.headers, request.arrived_ms, waiting):
                request.refused = (waiting, self.policy.retry_after_s(waiting))
                task.serve_inline = True
            else:
                request.queued_at = time.monotonic()
                super().add_task(task)

    @property
    def idle(self) -> bool:
        with self.lock:
            return not self.queue and self.active_count == 0 and not self.fast.queue

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        self.fast.shutdown(cancel_pending, timeout)
        return super().shutdown(cancel_pending, timeout)


