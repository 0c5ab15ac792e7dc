"""The main loop: waitress's, on one epoll set kept across turns, taking every waiting connection in one turn."""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any

from waitress import wasyncore

from webapp.http.channel import QuietChannel, readable

# waitress accepts one connection per main-loop turn. When clients open hundreds at once (a load balancer
# warming its pool, clients reconnecting after a restart) and every turn is busy, the last of them waited
# seconds unaccepted, their requests unread and on the clock. A turn takes every connection waiting, up to
# this many.
ACCEPT_PER_TURN = 64


class EventLoop:
    """waitress's main loop on one epoll set kept across turns.

    wasyncore's loop asks every channel `readable()` and `writable()` and registers each with a new poll
    object on every turn: with hundreds of connections open (as under overload) that walk took ~85 % of
    the interpreter's time (measured with py-spy, 256 keep-alive connections), starving the request
    threads and delaying every answer, /healthz and 429s included. Here a turn asks only the channels
    that may have changed (`QuietChannel.dirty`, `QuietChannel.in_service`) plus the listener and the
    trigger, and updates their epoll registration when it changed; every FULL_SCAN_S it asks all of them
    (waitress's maintenance marks idle channels closing without telling anyone)."""

    FULL_SCAN_S = 0.5

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self.map = socket_map
        self.epoll = select.epoll()
        self.registered: dict[int, tuple[Any, int]] = {}
        self.others: list[tuple[int, Any]] = []  # the listener and the trigger: asked every turn
        self.last_full = 0.0

    def turn(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now - self.last_full >= self.FULL_SCAN_S:
            self.last_full = now
            QuietChannel.dirty.clear()
            for fd in [fd for fd in self.registered if fd not in self.map]:
                self._forget(fd)
            candidates = list(self.map.items())
            self.others = [(fd, obj) for fd, obj in candidates if not isinstance(obj, QuietChannel)]
        else:
            dirty = list(QuietChannel.dirty)
            QuietChannel.dirty.difference_update(dirty)
            candidates = [(obj._fileno, obj) for obj in dirty + list(QuietChannel.in_service)] + self.others
        for fd, obj in candidates:
            try:
                self._update(fd, obj)
            except Exception:  # noqa: BLE001 - a channel's fault closes that channel (a listener's: `keep_listening`)
                obj.handle_error()
        for fd, flags in self.epoll.poll(timeout_s):
            obj = self.map.get(fd)
            if obj is None:
                self._forget(fd)
                continue
            wasyncore.readwrite(obj, flags)  # calls the object's handle_error on any exception
            if isinstance(obj, QuietChannel):
                QuietChannel.dirty.add(obj)
            elif getattr(obj, "accepting", False):  # the listener: waitress accepted one connection; take the rest
                try:
                    accept_waiting(obj, ACCEPT_PER_TURN - 1, within_limit=True)
                except Exception:  # noqa: BLE001 - logged by the listener's `keep_listening`
                    obj.handle_error()

    def _update(self, fd: int | None, obj: Any) -> None:
        current: Any = self.map.get(fd) if fd is not None else None
        if fd is None or current is not obj:  # closed (or its descriptor reused by another)
            if fd is not None and fd in self.registered and self.registered[fd][0] is obj:
                self._forget(fd)
            return
        flags = 0
        if obj.readable():
            flags |= select.EPOLLIN | select.EPOLLPRI
        if obj.writable() and not obj.accepting:
            flags |= select.EPOLLOUT
        known = self.registered.get(fd)
        if known is not None and known[0] is obj and known[1] == flags:
            return
        if not flags:
            self._forget(fd)
            return
        try:
            if known is None:
                self.epoll.register(fd, flags)
            else:
                self.epoll.modify(fd, flags)
        except FileNotFoundError:  # the old socket on this descriptor was closed: epoll dropped it
            self.epoll.register(fd, flags)
        except FileExistsError:
            self.epoll.modify(fd, flags)
        self.registered[fd] = (obj, flags)

    def _forget(self, fd: int) -> None:
        if self.registered.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def close(self) -> None:
        self.epoll.close()


def accept_waiting(listener: Any, limit: int, *, within_limit: bool) -> None:
    """Accept up to `limit` connections the kernel has completed on `listener`, while there are any (and,
    `within_limit`, while waitress's connection limit allows)."""
    for _ in range(limit):
        if (within_limit and not listener.readable()) or not readable(listener.socket):
            return
        listener.handle_accept()


