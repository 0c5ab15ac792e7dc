"""A Kafka record becomes a `Claim`, or a `ClaimRejected` carrying its DLQ code (docs/interface.md).

Value: UTF-8 JSON `{"claim_id": str, "bucket": str, "object_key": str, "model_version": str?}`, where the
bucket and key must be ones the object store client accepts (bridge.payload). Header `deadline_ms` (keys
may be str or bytes; the last one wins): ASCII decimal epoch milliseconds, optional; a claim without it has
no deadline. The key names nothing: it is only logged.

Every parser here is total: whatever the record holds, it returns or raises `ClaimRejected`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.errors import ClaimRejected
from bridge.payload import bucket, json_object, key_text, object_key, optional_text
from tasks.celery_config import CLAIM_TASK

DEADLINE_HEADER = "deadline_ms"
# 9999-12-31T23:59:59.999Z: the latest deadline a datetime, and so Celery's `expires`, can carry.
MAX_DEADLINE_MS = 253_402_300_799_999
ABSENT = object()  # `header()` when there is no such header (None is a null header value)
# The claim id names the result object (claims/<claim_id>.json): no slashes, no dot-dot, no controls.
_CLAIM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
_DECIMAL = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Claim:
    claim_id: str
    bucket: str
    object_key: str
    model_version: str | None = None
    deadline_ms: int | None = None

    task_name: ClassVar[str] = CLAIM_TASK

    def item(self, task_id: str, *, deadline: bool = True) -> dict[str, Any]:
        """This claim as an item of a `tasks.score_claims` batch."""
        return {"id": task_id, "claim_id": self.claim_id, "bucket": self.bucket, "object_key": self.object_key,
                "model_version": self.model_version, "deadline_ms": self.deadline_ms if deadline else None}


def task_id(topic: str, partition: int, offset: int) -> str:
    """The deterministic Celery task id of the claim at this position: a redelivery reuses it."""
    return f"{topic}:{partition}:{offset}"


def header(headers: object, name: str) -> object:
    """The value of the last header called `name` (its key str or bytes), ABSENT when there is none. Anything
    in the list that is not a (key, value) pair, or whose key is neither str nor bytes, is not a header."""
    found: object = ABSENT
    for entry in headers if isinstance(headers, list | tuple) else ():
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            continue
        key, value = entry
        if isinstance(key, bytes | bytearray | memoryview):
            key = bytes(key).decode("utf-8", "replace")
        if key == name:
            found = value
    return found


def parse_deadline(headers: object) -> int | None:
    """Header `deadline_ms` as epoch milliseconds; None without one. Any value but ASCII decimal digits
    (a null one too) is `invalid_deadline`, and so is a deadline past what Celery's `expires` can carry."""
    raw = header(headers, DEADLINE_HEADER)
    if raw is ABSENT:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw).decode("ascii", "replace")
    if not isinstance(raw, str) or not _DECIMAL.fullmatch(raw):
        raise ClaimRejected("invalid_deadline", "deadline_ms must be decimal epoch milliseconds")
    deadline = int(raw)
    if deadline > MAX_DEADLINE_MS:
        raise ClaimRejected("invalid_deadline", "deadline_ms is after the year 9999")
    return deadline


def parse_value(value: object) -> dict[str, Any]:
    """The claim's value as a JSON object (bridge.payload)."""
    return json_object(value)


def parse_key(key: object) -> str | None:
    """The record key as text for the logs: claims are named by their claim_id, so any key is accepted."""
    return key_text(key)


def parse_claim(value: object, headers: object) -> Claim:
    """The claim a record holds: value first (invalid_json, invalid_claim), then the deadline header."""
    data = parse_value(value)
    claim_id = data.get("claim_id")
    if not isinstance(claim_id, str) or not _CLAIM_ID.fullmatch(claim_id):
        raise ClaimRejected("invalid_claim", "claim_id must be 1-200 letters, digits or ._:@-")
    return Claim(claim_id, bucket(data), object_key(data), optional_text(data, "model_version"), parse_deadline(headers))
