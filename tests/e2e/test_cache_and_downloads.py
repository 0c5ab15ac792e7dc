"""The response cache and /download_processed, end to end over loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devtools.processes import ManagedProcess, start_api
from devtools.services import free_port, start_s3
from settings import Settings
from tasks.storage import ObjectStore
from tests.e2e.serving import api_with_worker

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]
BLOB = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture(scope="module")
def stack(module_env: dict[str, str], base_settings: Settings,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    logs = tmp_path_factory.mktemp("cache-logs")
    store = ObjectStore(base_settings)
    store.ensure_bucket(base_settings.bucket_processed)
    store.put_bytes(base_settings.bucket_processed, "e2e/blob.bin", BLOB)
    store.put_bytes(base_settings.bucket_processed, "e2e/dir with space/ü.txt", b"hello")
    env = {**module_env, "CACHE_MODE": "always"}
    with api_with_worker(env, logs) as api:
        yield api


def test_a_repeated_input_is_served_from_the_cache(stack: ManagedProcess) -> None:
    row = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 1.0]
    first = requests.post(f"{stack.url}/predict", json={"features": row}, timeout=10).json()
    second = requests.post(f"{stack.url}/predict", json={"features": [int(v) for v in row]}, timeout=10).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["prediction"] == first["prediction"] and second["model_version"] == first["model_version"]
    assert stack.wait_for_event("served_cached", 60)[-1]["key"].startswith(f"cache:{first['model_version']}:")
    batch = requests.post(f"{stack.url}/predict", json={"instances": [row, ROW]}, timeout=10).json()
    again = requests.post(f"{stack.url}/predict", json={"instances": [row, ROW]}, timeout=10).json()
    assert (batch["cached"], again["cached"]) == (False, True) and again["predictions"] == batch["predictions"]


def test_the_whole_object_streams_back_intact(stack: ManagedProcess) -> None:
    response = requests.get(f"{stack.url}/download_processed/e2e/blob.bin", timeout=30)
    assert response.status_code == 200 and response.headers["Accept-Ranges"] == "bytes"
    assert int(response.headers["Content-Length"]) == len(BLOB)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(BLOB).digest()
    assert requests.get(f"{stack.url}/download_processed/e2e/dir%20with%20space/%C3%BC.txt", timeout=5).content == b"hello"


@pytest.mark.parametrize("header, start, stop", [
    ("bytes=0-0", 0, 1),
    ("bytes=100-1099", 100, 1100),
    ("bytes=1048576-", 1048576, len(BLOB)),
    ("bytes=-500", len(BLOB) - 500, len(BLOB)),
    (f"bytes={len(BLOB) - 10}-{len(BLOB) + 1000}", len(BLOB) - 10, len(BLOB)),
])
def test_a_range_returns_exactly_the_requested_bytes(stack: ManagedProcess, header: str, start: int, stop: int) -> None:
    response = requests.get(f"{stack.url}/download_processed/e2e/blob.bin", headers={"Range": header}, timeout=10)
    assert response.status_code == 206
    assert response.content == BLOB[start:stop]
    assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BLOB)}"


@pytest.mark.parametrize("header", ["bytes=5-1", "items=0-5", "bytes=abc"])
def test_a_malformed_range_is_ignored_as_rfc_9110_says(stack: ManagedProcess, header: str) -> None:
    response = requests.get(f"{stack.url}/download_processed/e2e/blob.bin", headers={"Range": header}, timeout=10)
    assert response.status_code == 200 and len(response.content) == len(BLOB)


@pytest.mark.parametrize("header", [f"bytes={len(BLOB)}-", f"bytes={len(BLOB) + 5}-{len(BLOB) + 9}", "bytes=0-1,5-9"])
def test_an_unsatisfiable_or_multiple_range_is_416(stack: ManagedProcess, header: str) -> None:
    response = requests.get(f"{stack.url}/download_processed/e2e/blob.bin", headers={"Range": header}, timeout=10)
    assert response.status_code == 416, header
    assert response.json()["error"]["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{len(BLOB)}"


@pytest.mark.parametrize("path, status, code", [
    ("e2e/missing.bin", 404, "object_missing"),
    ("e2e/%2E%2E/e2e/blob.bin", 400, "invalid_key"),
    ("..%2Fmlflow%2Fsecret", 400, "invalid_key"),
    ("e2e/%01control", 400, "invalid_key"),
    ("e2e/%2e/blob.bin", 400, "invalid_key"),
    ("e2e%5Cblob.bin", 400, "invalid_key"),
    ("/e2e/blob.bin", 400, "invalid_key"),
    ("e2e/%252e%252e/e2e/blob.bin", 400, "invalid_key"),
    ("e2e/%EF%BC%8E%EF%BC%8E/e2e/blob.bin", 400, "invalid_key"),
    ("e2e/%E2%80%AEblob.bin", 400, "invalid_key"),
    ("e2e/%FF.bin", 400, "invalid_key"),
    ("e2e/" + "x" * 1021, 400, "invalid_key"),
])
def test_bad_and_missing_keys(stack: ManagedProcess, path: str, status: int, code: str) -> None:
    response = requests.get(f"{stack.url}/download_processed/{path}", timeout=5)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_unreachable_storage_is_503(module_env: dict[str, str], log_dir: Path) -> None:
    own = start_s3(workdir=log_dir)
    api = start_api({**module_env, "S3_ENDPOINT": own.address}, log_dir, free_port(), ready=False)
    try:
        assert requests.get(f"{api.url}/download_processed/anything.bin", timeout=5).status_code == 404
        own.stop()
        response = requests.get(f"{api.url}/download_processed/anything.bin", timeout=10)
        assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
        assert response.headers["Retry-After"].isdigit()
    finally:
        api.stop()
        own.stop()
