"""Claim parsing, DLQ headers and failure codes: every poison record gets the code docs/interface.md names."""

from __future__ import annotations

import json

import pytest

from bridge.claim import Claim, parse_claim, parse_key, task_id
from bridge.deadletter import dlq_headers
from bridge.dispatch import Record, failure_code
from bridge.errors import ClaimRejected
from tasks.claim_scoring import SchemaMismatch
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
        (value(VALID), [("deadline_ms", None)], "invalid_deadline"),  # a null header value is not a decimal
        (value(VALID), [("deadline_ms", b"1"), ("deadline_ms", b"x")], "invalid_deadline"),  # the last one wins
        (value(VALID), [("deadline_ms", b"253402300800000")], "invalid_deadline"),  # after 9999-12-31
        (b"[" * 50_000 + b"]" * 50_000, [], "invalid_json"),  # RecursionError inside json
        (b'{"claim_id": ' + b"9" * 5_000 + b"}", [], "invalid_json"),  # past Python's 4,300-digit limit
        (b'{"claim_id": "c-1", "claim_id": 5}', [], "invalid_claim"),  # duplicate keys: the last one wins
        (value(VALID).decode().encode("utf-16"), [], "invalid_json"),
        (value({**VALID, "bucket": "B"}), [], "invalid_claim"),  # not a name the object store client takes
        (value({**VALID, "bucket": "192.168.0.1"}), [], "invalid_claim"),
        (value({**VALID, "bucket": "a..b"}), [], "invalid_claim"),
        (value({**VALID, "bucket": "\ud800bc"}), [], "invalid_claim"),
        (value({**VALID, "object_key": "   "}), [], "invalid_claim"),
        (value({**VALID, "object_key": "a/../b"}), [], "invalid_claim"),
        (value({**VALID, "object_key": "k" * 1025}), [], "invalid_claim"),
        (value({**VALID, "object_key": "a\nb"}), [], "invalid_claim"),
        (value({**VALID, "object_key": "\udc80"}), [], "invalid_claim"),
        (value({**VALID, "model_version": "v" * 201}), [], "invalid_claim"),
        ("not bytes", [], "invalid_json"),
    ],
)
def test_poison_records_get_their_code(raw: object, headers: list, code: str) -> None:
    with pytest.raises(ClaimRejected) as rejected:
        parse_claim(raw, headers)
    assert rejected.value.code == code


def test_odd_headers_are_no_headers_and_a_missing_model_version_is_none() -> None:
    headers = [None, "deadline_ms", ("deadline_ms",), (7, b"x"), (None, b"x"), ("", b""), ("x", None)]
    claim = parse_claim(value({**VALID, "model_version": ""}), headers)
    assert claim == Claim("c-1", "processed-data", "demo/features.parquet")
    assert parse_claim(value(VALID), 42).deadline_ms is None


def test_non_ascii_object_keys_and_the_latest_deadline_are_accepted() -> None:
    claim = parse_claim(value({**VALID, "object_key": "données/été 2024.parquet"}), [("deadline_ms", "253402300799999")])
    assert claim.object_key == "données/été 2024.parquet" and claim.deadline_ms == 253_402_300_799_999


@pytest.mark.parametrize(("key", "text"), [(None, None), (b"", None), (b"k-1", "k-1"), (b"\xffk", "\ufffdk"),
                                           ("\ud800k", "?k"), (b"x" * 300, "x" * 200), (12, None)])
def test_keys_are_logged_as_text(key: object, text: str | None) -> None:
    assert parse_key(key) == text


def test_task_id_is_the_records_position() -> None:
    assert task_id("inference-data", 3, 42) == "inference-data:3:42"


def test_dlq_keeps_original_headers_and_adds_the_error() -> None:
    record = Record("t", 0, 5, b"k", None, [("deadline_ms", b"1"), ("error", b"stale")])
    headers = dlq_headers(record, "invalid_json", "the record has no value")
    assert headers == [("deadline_ms", b"1"), ("error", b"invalid_json"), ("error_message", b"the record has no value")]


def test_dlq_headers_are_what_the_producer_takes_and_name_a_model_topic() -> None:
    record = Record("m", 0, 5, b"k", b"{", [("trace", None), ("source_topic", b"forged")])  # type: ignore[list-item]
    headers = dlq_headers(record, "invalid_json", "not JSON", "model-selected")
    assert headers == [("trace", b""), ("error", b"invalid_json"), ("error_message", b"not JSON"),
                       ("source_topic", b"model-selected")]


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
