"""Claim parsing, DLQ headers and failure codes: every poison record gets the code CONTRACT.md names."""

from __future__ import annotations

import json

import pytest

from bridge.claims import Claim, parse_claim, task_id
from bridge.deadletter import dlq_headers
from bridge.dispatch import Record, failure_code
from bridge.errors import ClaimRejected
from tasks.claims import SchemaMismatch
from tasks.errors import ModelUnavailable, ObjectMissing, StorageUnavailable

pytestmark = pytest.mark.unit

VALID = {"claim_id": "c-1", "bucket": "processed-data", "object_key": "demo/features.parquet"}


def value(data: object) -> bytes:
    return json.dumps(data).encode()


def test_a_valid_claim_without_deadline() -> None:
    assert parse_claim(value(VALID), []) == Claim("c-1", "processed-data", "demo/features.parquet")


@pytest.mark.parametrize("key", ["deadline_ms", b"deadline_ms"])
@pytest.mark.parametrize("raw", [b"1700000000000", "1700000000000"])
def test_deadline_header_with_str_or_bytes_keys(key: str | bytes, raw: bytes | str) -> None:
    claim = parse_claim(value({**VALID, "model_version": "v1"}), [("other", b"x"), (key, raw)])
    assert claim.deadline_ms == 1_700_000_000_000
    assert claim.model_version == "v1"


@pytest.mark.parametrize(
    ("raw", "headers", "code"),
    [
        (None, [], "invalid_json"),
        (b"not json", [], "invalid_json"),
        (b"\xff\xfe", [], "invalid_json"),
        (b"[1, 2]", [], "invalid_claim"),
        (value({"bucket": "b", "object_key": "k"}), [], "invalid_claim"),
        (value({**VALID, "object_key": ""}), [], "invalid_claim"),
        (value({**VALID, "bucket": 3}), [], "invalid_claim"),
        (value({**VALID, "claim_id": "../etc"}), [], "invalid_claim"),
        (value({**VALID, "claim_id": "a/b"}), [], "invalid_claim"),
        (value({**VALID, "model_version": 7}), [], "invalid_claim"),
        (value(VALID), [("deadline_ms", b"soon")], "invalid_deadline"),
        (value(VALID), [("deadline_ms", b"-5")], "invalid_deadline"),
        (value(VALID), [("deadline_ms", b"1.5")], "invalid_deadline"),
        (value(VALID), [(b"deadline_ms", b"\xff")], "invalid_deadline"),
    ],
)
def test_poison_records_get_their_code(raw: bytes | None, headers: list, code: str) -> None:
    with pytest.raises(ClaimRejected) as rejected:
        parse_claim(raw, headers)
    assert rejected.value.code == code


def test_task_id_is_the_records_position() -> None:
    assert task_id("inference-data", 3, 42) == "inference-data:3:42"


def test_dlq_keeps_original_headers_and_adds_the_error() -> None:
    record = Record("t", 0, 5, b"k", None, [("deadline_ms", b"1"), ("error", b"stale")])
    headers = dlq_headers(record, "invalid_json", "the record has no value")
    assert headers == [("deadline_ms", b"1"), ("error", b"invalid_json"), ("error_message", b"the record has no value")]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ObjectMissing("gone"), "object_missing"),
        (SchemaMismatch("wrong columns"), "schema_mismatch"),
        (StorageUnavailable("down"), "storage_unavailable"),
        (ModelUnavailable("none"), "task_failed"),
        (RuntimeError("boom"), "task_failed"),
        (type("SchemaMismatch", (Exception,), {})("rebuilt by Celery"), "schema_mismatch"),
    ],
)
def test_failure_codes(error: Exception, code: str) -> None:
    assert failure_code(error) == code
