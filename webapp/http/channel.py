"""The connection: waitress's channel without a busy loop, reading receive timestamps, answering probes in
the I/O thread, and never letting a fault reach the listener."""

from __future__ import annotations

import select
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel

from webapp.http import timestamps
from webapp.http.answers import JsonErrorTask, MarkedTask

# The most a channel hands to one send() call. waitress uses the socket's SO_SNDBUF as read when the
# connection was accepted: 16 KiB on Linux by default (tcp_wmem), so a 256 KiB download chunk took 16
# trips through the interpreter, each giving the GIL away and taking it back. The kernel takes what fits.
SEND_CHUNK_BYTES = 256 * 1024


def readable(sock: Any) -> bool:
    """Whether a socket has data to read now (poll: select() fails on descriptors above 1023)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class QuietChannel(HTTPChannel):
    """waitress's channel, without a busy loop. `HTTPChannel.writable()` is true whenever output is buffered,
    but `handle_write()` sends nothing while the request's task still runs and less than `send_bytes` is
    buffered; so from the moment a response is written until its task returns, the main loop polls a
    socket that is always writable and does nothing (measured: ~10,000 loop turns a second at 200
    requests a second, holding the GIL from the request threads). Here `writable()` answers what
    `handle_write()` will do; the task pulls the trigger when it ends, and the main loop flushes then."""

    serve_inline = False
    task_class = MarkedTask
    error_task_class = JsonErrorTask
    # For `EventLoop`: channels whose readiness may have changed since the loop last asked them (I/O
    # events, new channels) and channels a request thread is serving (it changes their state, then pulls
    # the trigger; they stay here until after that, then move to `dirty`). Set operations are atomic
    # under the GIL.
    dirty: set[QuietChannel] = set()
    in_service: set[QuietChannel] = set()

    def add_channel(self, map: Any = None) -> None:  # noqa: A002 - wasyncore's signature
        super().add_channel(map)
        QuietChannel.dirty.add(self)

    def service(self) -> None:
        QuietChannel.in_service.add(self)
        try:
            if getattr(self.server, "draining", False) and self.requests:
                # Answer, then close: waitress adds `Connection: close` and closes once the response is
                # flushed, so the client opens its next request elsewhere instead of on a connection about to go.
                self.requests[0].headers["CONNECTION"] = "close"
            super().service()
        finally:
            QuietChannel.dirty.add(self)
            QuietChannel.in_service.discard(self)

    received_at_ms: int | None = None  # the kernel's receive time of the data read last (epoch ms)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sendbuf_len: int = max(self.sendbuf_len, SEND_CHUNK_BYTES)
        self.timestamps = timestamps.enable(self.socket)
        # A new connection's first request usually arrives with it (a probe connects and sends at once):
        # read it now instead of one main-loop turn later, which under load is one more wait for the GIL.
        # This runs inside the listener's accept: whatever the bytes do, the error is this channel's
        # (logged, and the connection closed), never the listener's.
        if readable(self.socket):
            try:
                self.handle_read()
            except Exception:  # noqa: BLE001 - handle_error logs it and closes this connection
                self.handle_error()

    def recv(self, buffer_size: int) -> bytes:
        """wasyncore's recv, also reading the kernel's receive timestamp of the data (SO_TIMESTAMP)."""
        if not self.timestamps:
            return super().recv(buffer_size)
        try:
            data, ancillary, _flags, _address = self.socket.recvmsg(buffer_size, timestamps.SPACE)
        except OSError as why:
            if why.args[0] in wasyncore._DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            self.handle_close()  # the peer closed: wasyncore signals it with an empty read
            return b""
        received = timestamps.received_at(ancillary)
        if received is not None:
            self.received_at_ms = int(received * 1000)
        return data

    def handle_read(self) -> None:
        """A liveness probe is answered here, in the I/O thread, once the request is read: no hand-over
        to a request thread and back, each of which waits for the GIL while /predict keeps it busy.
        (`received()` runs under the requests lock that `service()` takes, hence after it returns.)"""
        super().handle_read()
        while self.serve_inline:  # serving one may mark the next pipelined request for the I/O thread too
            self.serve_inline = False
            self.service()

    def writable(self) -> bool:
        if (self.requests and not (self.will_close or self.close_when_flushed)
                and self.total_outbufs_len < self.adj.send_bytes):
            return False
        return bool(super().writable())


