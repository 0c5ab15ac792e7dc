"""The kernel's receive time of what a socket reads (SO_TIMESTAMP, Linux): when data arrived, not when
the process got round to reading it. The API stamps requests with it (their deadlines count from there);
perf's load client stamps responses with it (its own lateness in reading is not the server's latency).

Use: `enable(sock)` once, then `sock.recvmsg(size, SPACE)` and `received_at(ancillary)`.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterable
from typing import Any

# Python does not name SO_TIMESTAMP. recvmsg() then carries the receive time as a struct timeval.
# Measured: recvmsg() with it costs ~0.6 us more than recv().
_SO_TIMESTAMP = 29
_TIMEVAL = struct.Struct("@ll")  # struct timeval: time_t and suseconds_t, longs on Linux
SPACE = socket.CMSG_SPACE(_TIMEVAL.size)


def enable(sock: Any) -> bool:
    """Ask the kernel to timestamp what this socket receives; False where it cannot."""
    if sys.platform != "linux":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
    except OSError:
        return False
    return True


def received_at(ancillary: Iterable[tuple[int, int, bytes]]) -> float | None:
    """The receive time (epoch seconds, microsecond resolution) in recvmsg()'s ancillary data, if any."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMP and len(payload) >= _TIMEVAL.size:
            seconds, microseconds = _TIMEVAL.unpack_from(payload)
            return seconds + microseconds / 1e6
    return None
