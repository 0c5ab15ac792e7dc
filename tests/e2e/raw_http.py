"""Raw bytes to the API over a socket, and what came back: for the tests of what the HTTP server does with
input no HTTP client library would send."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

#: The longest any one exchange waits for the server to answer or close: generous for a loaded machine.
ANSWER_TIMEOUT_S = 15.0


@dataclass
class Exchange:
    """What the server did with one input: the raw bytes it sent back, whether it closed the connection,
    and whether it was still silent when the wait ran out."""

    raw: bytes = b""
    closed: bool = False
    timed_out: bool = False
    responses: list[Response] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, data: bytes, *, half_close: bool = True, chunks: int = 1, responses: int = 1,
             timeout_s: float = ANSWER_TIMEOUT_S) -> Exchange:
    """Send `data` (in `chunks` pieces) on a new connection, then (with `half_close`) shut our side for
    writing, and read until the server closes or `timeout_s` passes; without `half_close`, until
    `responses` whole responses arrived. (waitress takes a half-close for a client gone: it answers
    what it already handed to the app, not the requests after.)"""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    result = Exchange()
    try:
        step = max(1, -(-len(data) // chunks))
        try:
            for start in range(0, len(data), step):
                sock.sendall(data[start:start + step])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused mid-send (and closed): what it answered is still readable
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                result.timed_out = True
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                result.timed_out = True
                break
            except OSError:  # reset by the server
                result.closed = True
                break
            if not chunk:
                result.closed = True
                break
            result.raw += chunk
            if not half_close and complete(result.raw, responses):
                break
    finally:
        sock.close()
    result.responses = parse_responses(result.raw)
    return result


def parse_responses(raw: bytes) -> list[Response]:
    """The HTTP/1.x responses in `raw`, in order (a trailing incomplete one is left out)."""
    found = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        if not separator:
            break
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        found.append(Response(int(parts[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def complete(raw: bytes, responses: int = 1) -> bool:
    """Whether `raw` holds at least `responses` whole responses (or something that is not HTTP)."""
    try:
        return len(parse_responses(raw)) >= responses
    except AssertionError:
        return True


def healthz_answers(port: int, timeout_s: float = ANSWER_TIMEOUT_S) -> bool:
    """Whether a new connection gets `GET /healthz` answered 200."""
    try:
        done = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\n\r\n", half_close=False, timeout_s=timeout_s)
    except OSError:
        return False
    return done.statuses[:1] == [200]


def assert_json_error(response: Response) -> None:
    """A 4xx answer carries the contract's error body."""
    assert response.headers.get("content-type", "").startswith("application/json"), response
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
