"""Object keys for GET /download_processed: what `check_key` refuses and accepts, and that a request through
the app never reads outside the key it names, never from another bucket, and never answers 500."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import webapp
from settings import Settings
from webapp.downloads import MAX_KEY_BYTES, check_key
from webapp.errors import ApiError

REFUSED = {
    # absolute, and `.`/`..` segments
    "absolute": "/etc/passwd",
    "only a slash": "/",
    "dot-dot first": "../mlflow/model.pkl",
    "dot-dot inside": "a/../../b",
    "dot-dot last": "a/..",
    "dot segment": "a/./b",
    "only dots": "..",
    # what one more percent-decoding (a proxy, a client) would turn into a traversal or an absolute key
    "encoded dot-dot": "%2e%2e/secret",
    "encoded upper-case dot-dot": "a/%2E%2E/b",
    "encoded slash to dot-dot": "..%2Fsecret",
    "encoded leading slash": "%2Fetc/passwd",
    "encoded backslash": "a%5Cb",
    "encoded NUL": "a%00b",
    # separators of other systems
    "backslash": "a\\b",
    "backslash traversal": "..\\..\\secret",
    # control characters
    "NUL": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "escape": "a\x1b[31mb",
    "DEL": "a\x7fb",
    "C1 control": "a\x85b",
    # Unicode look-alikes: NFKC folds them to `.`, `..`, `/` or `\`
    "fullwidth dot-dot": "\uff0e\uff0e/secret",
    "one-dot leaders": "a/\u2024\u2024/b",
    "two-dot leader": "\u2025/secret",
    "small full stop": "a/\ufe52/b",
    "fullwidth solidus": "a\uff0fb",
    "fullwidth dot-dot behind a fullwidth solidus": "a\uff0f\uff0e\uff0e\uff0fb",
    "fullwidth reverse solidus": "a\uff3cb",
    # slash and backslash look-alikes NFKC leaves alone
    "division slash": "a\u2215b",
    "fraction slash": "..\u2044secret",
    "big solidus": "a\u29f8b",
    "set minus": "a\u2216b",
    # invisible and direction-changing format characters
    "zero-width space": "a\u200bb",
    "zero-width joiner": "a\u200db",
    "byte-order mark": "\ufeffa",
    "right-to-left override": "invoice\u202egpj.exe",
    "soft hyphen": "a\u00adb",
    "line separator": "a\u2028b",
    # what a URL's invalid UTF-8 decodes to, and a lone surrogate
    "replacement character": "a\ufffdb",
    "lone surrogate": "a\ud800b",
    # size
    "empty": "",
    "1,025 ASCII bytes": "a" * (MAX_KEY_BYTES + 1),
    "1,026 bytes in 513 characters": "\u00fc" * 513,
    "1,026 bytes in 342 characters": "\u20ac" * 342,
}

ACCEPTED = {
    "flat": "claims.parquet",
    "nested": "a/b/c.parquet",
    "spaces": "e2e/dir with space/file name.parquet",
    "unicode letters": "donn\u00e9es/\u00fc/\u65e5\u672c\u8a9e/\u0434\u0430\u043d\u043d\u044b\u0435.parquet",
    "dots inside names": "a/.hidden/b..c/...",
    "trailing slash": "a/b/",
    "empty segment": "a//b",
    "percent without a traversal": "reports/100%25/q1%20.csv",
    "literal percent sign": "50% off.parquet",
    "1,024 ASCII bytes": "a" * MAX_KEY_BYTES,
    "1,024 bytes in 512 characters": "\u00fc" * 512,
    "emoji": "\U0001f4ca/chart.png",
}


@pytest.mark.parametrize("key", REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_key_is_refused_with_400_invalid_key(key: str) -> None:
    # Given a key that is absolute, traverses, or hides a separator or a control character
    # When it is checked
    with pytest.raises(ApiError) as raised:
        check_key(key)
    # Then it is refused as invalid_key
    assert (raised.value.status, raised.value.code) == (400, "invalid_key")


@pytest.mark.parametrize("key", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_plain_relative_key_is_accepted_as_written(key: str) -> None:
    # Given a relative key of at most 1,024 bytes, with no traversal and no control characters
    # When it is checked, Then it comes back unchanged
    assert check_key(key) == key


@dataclass
class Stat:
    size: int
    etag: str = "etag"
    content_type: str | None = "application/octet-stream"


class RecordingStore:
    """Stands in for the object store and records every (bucket, key) the view asks for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def stat(self, bucket: str, key: str) -> Stat:
        self.asked.append((bucket, key))
        return Stat(size=len(key.encode()))

    def stream(self, bucket: str, key: str, offset: int, length: int, chunk: int) -> Iterator[bytes]:
        self.asked.append((bucket, key))
        return iter([key.encode()[offset:offset + length]])


@pytest.fixture
def app_and_store() -> Iterator[tuple[FlaskClient, RecordingStore]]:
    settings = Settings(bucket_processed="processed-data")
    app = webapp.create_app(settings, start=False)
    store = RecordingStore()
    app.extensions["gateway"].downloads = store
    yield app.test_client(), store  # start=False: no thread or connection to close


# Werkzeug percent-decodes the path once before routing; the view sees the decoded key.
REFUSED_URLS = [
    "..%2Fmlflow%2Fmodel.pkl",
    "%2e%2e/mlflow/model.pkl",
    "e2e/%2E%2E/%2E%2E/mlflow",
    "e2e/%2e/blob.bin",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "a/%252e%252e/secret",
    "%252e%252e%252fsecret",
    "a%255c..%255csecret",
    "a%5C..%5Csecret",
    "a%00b",
    "a%0d%0aSet-Cookie:x",
    "a%7Fb",
    "a%FFb",
    "a%C0%AEb",
    "%EF%BC%8E%EF%BC%8E/secret",
    "a%E2%80%AEb",
    "a%E2%80%8Bb",
    "%E2%80%A4%E2%80%A4/secret",
    "x" * (MAX_KEY_BYTES + 1),
    "%C3%BC" * 513,
]


@pytest.mark.parametrize("path", REFUSED_URLS)
def test_a_bad_key_in_the_url_is_400_and_reads_nothing(app_and_store: tuple[FlaskClient, RecordingStore], path: str) -> None:
    client, store = app_and_store
    # When a key is asked for with percent-encoded, double-encoded or look-alike traversal in its URL
    response = client.get(f"/download_processed/{path}")
    # Then the answer is 400 invalid_key with the JSON error body, and storage was never asked
    assert response.status_code == 400, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["error"]["code"] == "invalid_key" and body["error"]["message"]
    assert store.asked == []


@pytest.mark.parametrize("path, key", [
    ("a/b/c.parquet", "a/b/c.parquet"),
    ("dir%20with%20space/%C3%BC.txt", "dir with space/\u00fc.txt"),
    ("reports/100%2525.csv", "reports/100%25.csv"),
    ("a//b", "a//b"),
    ("x" * MAX_KEY_BYTES, "x" * MAX_KEY_BYTES),
])
def test_a_good_key_in_the_url_reads_exactly_that_key_from_the_processed_bucket(
    app_and_store: tuple[FlaskClient, RecordingStore], path: str, key: str
) -> None:
    client, store = app_and_store
    # When a valid key is asked for
    response = client.get(f"/download_processed/{path}")
    # Then exactly that key, and only in BUCKET_PROCESSED, is read
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(store.asked) == {("processed-data", key)}
    assert response.data == key.encode()


# Function-scoped fixtures are shared by the examples on purpose: each example clears the store's record.
_SHARED_FIXTURE = hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.fuzz
@_SHARED_FIXTURE
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_any_key_is_either_refused_or_read_exactly(app_and_store: tuple[FlaskClient, RecordingStore], key: str) -> None:
    client, store = app_and_store
    store.asked.clear()
    # When any text is asked for as a key, percent-encoded in the URL
    response = client.get(f"/download_processed/{quote(key, safe='/')}")
    # Then it is refused with invalid_key and nothing is read, or exactly that key is read from the processed bucket
    # (an empty key leaves the route's path incomplete: 404, nothing read)
    if not key:
        assert response.status_code == 404 and store.asked == []
    elif response.status_code == 400:
        assert response.get_json()["error"]["code"] == "invalid_key" and store.asked == []
    else:
        assert response.status_code == 200 and set(store.asked) == {("processed-data", key)}
        assert check_key(key) == key


@pytest.mark.fuzz
@_SHARED_FIXTURE
@given(st.binary(min_size=1, max_size=60))
def test_any_bytes_in_the_url_never_fail_the_server(app_and_store: tuple[FlaskClient, RecordingStore], raw: bytes) -> None:
    client, store = app_and_store
    store.asked.clear()
    # When the key is arbitrary bytes, every one percent-encoded (invalid UTF-8 included)
    response = client.get("/download_processed/" + "".join(f"%{byte:02X}" for byte in raw))
    # Then the answer is a refusal or a read of a key check_key accepts, never a server error
    assert response.status_code in {200, 400}
    assert all(bucket == "processed-data" and check_key(key) == key for bucket, key in store.asked)
