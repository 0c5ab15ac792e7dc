"""The HTTP server survives any bytes: requests no client library would send, on raw sockets, against the real
API process. Every malformed request gets a 4xx with the JSON error body, or a closed connection; after every
input a new connection is still answered; the process is the same one at the end, with no request thread
stuck; and no exception ever reached the listening socket."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devtools.processes import ManagedProcess
from tests.e2e.raw_http import assert_json_error, exchange, healthz_answers
from tests.e2e.serving import api_with_worker
from tests.fuzzing import scaled

MAX_BODY_BYTES = 65536
THREADS = 4
ROW = b"[50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]"
PREDICT_BODY = b'{"features": ' + ROW + b"}"


@pytest.fixture(scope="module")
def api(module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    logs = tmp_path_factory.mktemp("http-bytes")
    env = {**module_env, "MAX_BODY_BYTES": str(MAX_BODY_BYTES), "HTTP_THREADS": str(THREADS)}
    with api_with_worker(env, logs) as server:
        yield server


def port_of(api: ManagedProcess) -> int:
    return int(api.url.rsplit(":", 1)[1])


def predict(body: bytes = PREDICT_BODY, extra: bytes = b"") -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def assert_unharmed(api: ManagedProcess) -> None:
    assert healthz_answers(port_of(api)), "a new connection was not answered"
    assert "uncaptured python exception" not in api.output()
    assert not api.events("http_listener_error") and not api.events("http_route_failed")


# -- regressions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-\x00: b\r\n\r\n",
], ids=["healthz", "predict", "name"])
def test_a_nul_byte_in_a_header_is_a_400_and_the_api_keeps_accepting(api: ManagedProcess, request_bytes: bytes) -> None:
    # Given a request whose header holds a NUL byte, sent as the first request of a new connection
    # (read inside the listener's accept)
    done = exchange(port_of(api), request_bytes)
    # Then it is answered 400 with the JSON error body
    assert done.statuses == [400], done
    assert_json_error(done.responses[0])
    # And every later connection is still accepted and answered
    assert_unharmed(api)


def test_a_nul_byte_in_a_later_request_on_a_connection_is_a_400(api: ManagedProcess) -> None:
    # Given a valid request followed on the same connection by one with a NUL byte in a header
    done = exchange(port_of(api), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nX-A: \x00\r\n\r\n",
                    half_close=False, responses=2)
    # Then the first is answered, the second refused, and the API keeps accepting
    assert done.statuses == [200, 400], done
    assert_unharmed(api)


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET", b"GET /healthz HTTP/1.1 extra", b"G\x00T /healthz HTTP/1.1"])
def test_a_malformed_request_line_is_a_400_with_the_json_error_body(api: ManagedProcess, line: bytes) -> None:
    done = exchange(port_of(api), line + b"\r\nHost: t\r\n\r\n")
    assert done.statuses == [400], done
    assert_json_error(done.responses[0])
    assert_unharmed(api)


def test_a_header_line_without_a_colon_is_a_400(api: ManagedProcess) -> None:
    done = exchange(port_of(api), b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n")
    assert done.statuses == [400], done
    assert_json_error(done.responses[0])
    assert_unharmed(api)


@pytest.mark.parametrize("length", [MAX_BODY_BYTES + 1, MAX_BODY_BYTES * 4 + 1, 10**12])
def test_a_body_over_the_limit_is_a_413_with_the_json_error_body(api: ManagedProcess, length: int) -> None:
    # Given a body declared over MAX_BODY_BYTES: over the app's limit, or over waitress's own (4x), which
    # waitress refuses before the app sees the request
    head = (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\n\r\n")
    body = b"[" * min(length, MAX_BODY_BYTES + 1)
    done = exchange(port_of(api), head + body)
    # Then the answer is 413 with the contract's error body either way
    assert done.statuses[:1] == [413], done
    assert_json_error(done.responses[0])
    assert_unharmed(api)


def test_a_chunked_body_over_the_limit_is_a_413(api: ManagedProcess) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
    done = exchange(port_of(api), b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert done.statuses[:1] == [413], done
    assert_json_error(done.responses[0])


def test_an_unsupported_transfer_encoding_is_a_400_not_a_server_error(api: ManagedProcess) -> None:
    done = exchange(port_of(api), b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert done.statuses == [400], done
    assert done.responses[0].json()["error"]["code"] == "unsupported_transfer_encoding"


def test_headers_too_large_are_a_431_with_the_json_error_body(api: ManagedProcess) -> None:
    done = exchange(port_of(api), b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    assert done.statuses[:1] == [431], done
    assert_json_error(done.responses[0])
    assert_unharmed(api)


# -- the fuzzer ----------------------------------------------------------------------------------------

CONTROL = bytes([*range(0, 32), 127])
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"get", b"G\x00T", b""]
PATHS = [b"/predict", b"/healthz", b"/readyz", b"/model", b"/metrics", b"/openapi.json", b"/download_processed/a.parquet",
         b"/publish_inference_claims", b"*", b"http://h/predict", b"h:80", b"/", b"//", b"/%zz", b"/%", b"/..%2f..%2fetc",
         b"/download_processed/%2e%2e/x", b"/download_processed/\xff\xfe", b"/predict?" + b"q=" * 50]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b"HTTP/", b"", b"HTTP/1.1 x"]


def _noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _control(rng: random.Random) -> bytes:
    return bytes([rng.choice(CONTROL)])


def _insert(rng: random.Random, data: bytes, piece: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + piece + data[at:]


def request_line(rng: random.Random) -> bytes:
    """A request line built from odd parts: methods, paths and versions, wrong separators, stray bytes."""
    parts = [rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS)]
    separator = rng.choice([b" ", b"  ", b"\t", b" \x00 ", b"\x0b", b""])
    line = separator.join(parts)
    if rng.random() < 0.3:
        line = _insert(rng, line, _control(rng))
    return line + rng.choice([b"\r\n", b"\n", b"\r", b"\r\r\n"]) + b"Host: t\r\nContent-Length: 0\r\n\r\n"


def control_bytes(rng: random.Random) -> bytes:
    """NUL and control bytes in the path, a header name or a header value."""
    where = rng.choice(["path", "name", "value"])
    byte = _control(rng) + (rng.choice([b"", _control(rng), b"\x80", b"\xff"]))
    path = _insert(rng, b"/healthz", byte) if where == "path" else b"/predict"
    name = _insert(rng, b"X-Test", byte) if where == "name" else b"X-Test"
    value = _insert(rng, b"value", byte) if where == "value" else b"value"
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + name + b": " + value + b"\r\n\r\n"


def header_lines(rng: random.Random) -> bytes:
    """Header lines without a colon, folded, with spaces before the colon, empty names, bare CR or LF."""
    odd = rng.choice([b"no colon", b" folded: x", b"\tfolded", b"X-A : b", b": empty name", b"X-A:", b":",
                      b"X-A: b\rX-B: c", b"X-A: b\nX-B: c", b"X-A\x7f: b", b"X" * 10_000 + b": y", b"\xff\xfe: \xff"])
    lines = [b"Host: t", odd] if rng.random() < 0.5 else [odd, b"Host: t"]
    return b"GET /healthz HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


def framing(rng: random.Random) -> bytes:
    """Bad, duplicate or conflicting Content-Length and Transfer-Encoding."""
    choices = [
        b"Content-Length: -1", b"Content-Length: +5", b"Content-Length: 0x10", b"Content-Length: 5 5",
        b"Content-Length: 99999999999999999999999999", b"Content-Length: 5\r\nContent-Length: 6",
        b"Content-Length: 5, 5", b"Content-Length: \xff", b"Content-Length:",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5", b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: identity", b"Transfer-Encoding: \x00chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip", b"Transfer-Encoding: xchunked",
    ]
    headers = rng.choice(choices)
    body = rng.choice([b"", PREDICT_BODY, b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
                       b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"-1\r\n\r\n", b"ffffffffffffffffff\r\nx\r\n",
                       b"5\r\nhelloXX0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", _noise(rng, 16)])
    return (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + headers + b"\r\n\r\n" + body)


def oversized(rng: random.Random) -> bytes:
    """Too many or too large headers, a huge request line."""
    kind = rng.choice(["one", "many", "line"])
    if kind == "one":
        return b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * rng.choice([70_000, 270_000]) + b"\r\n\r\n"
    if kind == "many":
        return b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(rng.choice([500, 30_000]))) + b"\r\n"
    return b"GET /" + b"a" * rng.choice([8_000, 300_000]) + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def truncated(rng: random.Random) -> bytes:
    """A valid request cut short (the connection is then half-closed by `exchange`)."""
    whole = predict()
    return whole[: rng.randrange(1, len(whole))]


def trailing(rng: random.Random) -> bytes:
    """A valid request followed by bytes that are not a request."""
    return predict() + rng.choice([_noise(rng, rng.randrange(1, 200)), b"\r\n\r\n", b"GET", b"\x00" * 10, b"HTTP/1.1 200 OK\r\n\r\n"])


def mutated(rng: random.Random) -> bytes:
    """A valid request with bytes flipped, inserted or removed."""
    data = bytearray(rng.choice([predict(), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /model HTTP/1.1\r\nHost: t\r\n\r\n"]))
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(data))
        action = rng.random()
        if action < 0.4:
            data[at] = rng.randrange(256)
        elif action < 0.7:
            data[at:at] = _noise(rng, rng.randrange(1, 8))
        else:
            del data[at:at + rng.randrange(1, 8)]
    return bytes(data)


def noise(rng: random.Random) -> bytes:
    return _noise(rng, rng.choice([1, 16, 512, 4096]))


def bodies(rng: random.Random) -> bytes:
    """Well-framed requests with bodies a JSON parser chokes on."""
    body = rng.choice([b"[" * 100_000, b'{"features": [' + b"9" * 5000 + b"]}", b'{"features": [1e400]}', b"\xff\xfe{}",
                       b'{"features": "\\ud800"}', b'{"features": NaN}', _noise(rng, 300), b"{" * 30 + b"}" * 30])
    return predict(body[:MAX_BODY_BYTES], rng.choice([b"", b"Content-Type: text/plain\r\n", b"Expect: 100-continue\r\n"]))


def pipelined(rng: random.Random) -> bytes:
    """A valid request, then on the same connection any other input: the second is routed by the request
    thread that finished the first (or by the I/O thread, after a /healthz it answered itself)."""
    first = rng.choice([predict(), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"])
    return first + GENERATORS[rng.choice(sorted(set(GENERATORS) - {"pipelined"}))](rng)


GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "request_line": request_line, "control_bytes": control_bytes, "header_lines": header_lines, "framing": framing,
    "oversized": oversized, "truncated": truncated, "trailing": trailing, "mutated": mutated, "noise": noise,
    "bodies": bodies, "pipelined": pipelined,
}


@pytest.mark.fuzz
def test_the_server_survives_any_bytes(api: ManagedProcess) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    port = port_of(api)
    tried: Counter[str] = Counter()
    answered: Counter[int] = Counter()
    # Given a few connections left open mid-request for the whole run (never-finished requests)
    hanging = []
    for partial in (b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", b"GET /healthz HT", b"POST /predict HTTP/1.1\r\n"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(partial)
        hanging.append(sock)
    try:
        for index in range(scaled(1000, 50_000)):
            kind = rng.choice(sorted(GENERATORS))
            data = GENERATORS[kind](rng)
            chunks = rng.choice([1, 1, 2, 7])
            # When the input is sent (in pieces, sometimes), and our side of the connection shut
            done = exchange(port, data, chunks=chunks)
            tried[kind] += 1
            where = f"seed {seed}, input {index} ({kind}, {chunks} pieces): {data[:300]!r} -> {done.raw[:300]!r}"
            # Then each answer is below 500, every 4xx carries the JSON error body, and the server
            # answered or closed within the bound
            assert not done.timed_out, f"no answer and no close: {where}"
            for response in done.responses:
                answered[response.status] += 1
                assert response.status < 500, where
                if response.status >= 400:
                    assert_json_error(response)
            # And a new connection is still answered
            assert healthz_answers(port), f"a new connection was not answered after {where}"
        print(f"seed {seed}: inputs by kind {dict(tried)}; answers by status {dict(sorted(answered.items()))}")
    finally:
        for sock in hanging:
            sock.close()
    # And the process is the one that started, no exception reached the listener, predictions are answered
    assert api.alive()
    assert_unharmed(api)
    with ThreadPoolExecutor(THREADS * 2) as pool:
        statuses = list(pool.map(lambda _: requests.post(f"{api.url}/predict", data=PREDICT_BODY, timeout=30,
                                                         headers={"Content-Type": "application/json"}).status_code,
                                 range(THREADS * 2)))
    assert statuses == [200] * (THREADS * 2)
    # And no request thread is stuck: a drain finds nothing unfinished and the process exits 0
    assert api.stop() == 0
    assert [event["unfinished"] for event in api.events("http_stopped")] == [0]
