"""A Kafka record becomes a `Claim`, or a `ClaimRejected` carrying its DLQ code (CONTRACT.md).

Value: UTF-8 JSON `{"claim_id": str, "bucket": str, "object_key": str, "model_version": str?}`.
Header `deadline_ms` (keys may be str or bytes): ASCII decimal epoch milliseconds, optional; a claim
without it has no deadline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.errors import ClaimRejected
from tasks.celery_app import CLAIM_TASK

DEADLINE_HEADER = "deadline_ms"
# The claim id names the result object (claims/<claim_id>.json): no slashes, no dot-dot, no controls.
_CLAIM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
_DECIMAL = re.compile(r"[0-9]{1,19}")
_REQUIRED = ("claim_id", "bucket", "object_key")


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


def header(headers: Iterable[tuple[str | bytes, bytes | str | None]] | None, name: str) -> bytes | str | None:
    """The value of the last header called `name`, whether its key arrived as str or bytes."""
    found: bytes | str | None = None
    for key, value in headers or ():
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if text == name:
            found = value
    return found


def parse_deadline(headers: Iterable[tuple[str | bytes, bytes | str | None]] | None) -> int | None:
    raw = header(headers, DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ClaimRejected("invalid_deadline", "deadline_ms is not ASCII") from None
    if not _DECIMAL.fullmatch(text):
        raise ClaimRejected("invalid_deadline", "deadline_ms must be decimal epoch milliseconds")
    return int(text)


def parse_value(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise ClaimRejected("invalid_json", "the record has no value")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ClaimRejected("invalid_json", "the value is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ClaimRejected("invalid_claim", "the value must be a JSON object")
    return data


def parse_claim(value: bytes | None, headers: Iterable[tuple[str | bytes, bytes | str | None]] | None) -> Claim:
    data = parse_value(value)
    missing = [name for name in _REQUIRED if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise ClaimRejected("invalid_claim", f"missing or not a non-empty string: {', '.join(missing)}")
    if not _CLAIM_ID.fullmatch(data["claim_id"]):
        raise ClaimRejected("invalid_claim", "claim_id must be 1-200 letters, digits or ._:@-")
    model_version = data.get("model_version")
    if model_version is not None and not isinstance(model_version, str):
        raise ClaimRejected("invalid_claim", "model_version must be a string")
    return Claim(data["claim_id"], data["bucket"], data["object_key"], model_version, parse_deadline(headers))
