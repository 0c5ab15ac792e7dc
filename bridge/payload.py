"""A record's value as a JSON object, and the checks of the fields that claims and model records share.

Pure and total: each function returns its value or raises `ClaimRejected` with a CONTRACT.md code, whatever
it is given (no value, not bytes, not UTF-8, not JSON, nested past the interpreter's recursion limit,
integers past Python's 4,300-digit limit, wrong types, lone surrogates, megabyte strings). Anything else
escaping from here would stop the poll loop on one record.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bridge.errors import ClaimRejected

MAX_TEXT_CHARS = 200  # names, versions and ids: enough for any real one, short enough to log whole
MAX_OBJECT_KEY_BYTES = 1024  # S3's limit
# S3's bucket naming rules (3-63 lowercase letters, digits, dots and hyphens, not an IP address). The worker's
# object store client raises on a name it refuses before any request, outside the claim's own error
# handling: one such claim would fail its whole batch, valid claims with it.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")


def json_object(value: object) -> dict[str, Any]:
    """The value as a JSON object: `invalid_json` when it is missing or not UTF-8 JSON, `invalid_claim`
    when it is JSON but not an object. Duplicate keys: the last one wins, as in Python's json."""
    if value is None:
        raise ClaimRejected("invalid_json", "the record has no value")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ClaimRejected("invalid_json", "the value is not bytes")
    try:
        data = json.loads(bytes(value).decode("utf-8"))
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ClaimRejected("invalid_json", "the value is nested too deeply") from None
    except ValueError:  # includes UnicodeDecodeError and integers over 4,300 digits
        raise ClaimRejected("invalid_json", "the value is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ClaimRejected("invalid_claim", "the value must be a JSON object")
    return data


def _encodable(text: str) -> bool:
    """True when `text` has a UTF-8 form (no lone surrogates): JSON escapes let those through."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> bool:
    return _encodable(text) and not any(ord(char) < 32 or ord(char) == 127 for char in text)


def text(data: dict[str, Any], name: str, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Field `name` as a string of 1 to `max_chars` printable characters."""
    field = data.get(name)
    if not isinstance(field, str) or not field:
        raise ClaimRejected("invalid_claim", f"{name} must be a non-empty string")
    if len(field) > max_chars or not _printable(field):
        raise ClaimRejected("invalid_claim", f"{name} must be at most {max_chars} printable characters")
    return field


def optional_text(data: dict[str, Any], name: str) -> str | None:
    """Like `text`, and None when the field is absent, null or empty."""
    return None if data.get(name) in (None, "") else text(data, name)


def object_key(data: dict[str, Any], name: str = "object_key") -> str:
    """An object key of at most 1,024 UTF-8 bytes, without control characters or '.'/'..' segments (which
    the object store client refuses)."""
    key = text(data, name, max_chars=MAX_OBJECT_KEY_BYTES)
    if not key.strip() or len(key.encode("utf-8")) > MAX_OBJECT_KEY_BYTES:
        raise ClaimRejected("invalid_claim", f"{name} must be a non-blank key of at most {MAX_OBJECT_KEY_BYTES} bytes")
    if any(part in {".", ".."} for part in key.split("/")):
        raise ClaimRejected("invalid_claim", f"{name} must not have '.' or '..' segments")
    return key


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` cannot name an S3 bucket, or None when it can."""
    if not _BUCKET.fullmatch(bucket) or _IPV4.fullmatch(bucket):
        return "a bucket name is 3-63 lowercase letters, digits, dots and hyphens, not an IP address"
    if any(pair in bucket for pair in ("..", ".-", "-.")):
        return "a bucket name has no '..', '.-' or '-.'"
    return None


def bucket(data: dict[str, Any], name: str = "bucket") -> str:
    """Field `name` as a string that can name an S3 bucket."""
    found = text(data, name)
    problem = bucket_problem(found)
    if problem is not None:
        raise ClaimRejected("invalid_claim", f"{name}: {problem}")
    return found


def key_text(key: object) -> str | None:
    """A record key as text to log: its UTF-8 reading (undecodable bytes replaced), at most MAX_TEXT_CHARS;
    None when the record has none (or an empty one)."""
    if isinstance(key, bytes | bytearray | memoryview):
        found = bytes(key).decode("utf-8", "replace")
    elif isinstance(key, str):
        found = key.encode("utf-8", "replace").decode("utf-8")
    else:
        return None
    return found[:MAX_TEXT_CHARS] or None
