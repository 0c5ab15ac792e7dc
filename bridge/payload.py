"""A record's value as a JSON object, and the checks of the fields that claims and model records share.

Pure and total: each function returns its value or raises `ClaimRejected` with a docs/interface.md code, whatever
it is given (no value, not bytes, not UTF-8, not JSON, nested past the interpreter's recursion limit,
integers past Python's 4,300-digit limit, wrong types, lone surrogates, megabyte strings). Anything else
escaping from here would stop the poll loop on one record.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.errors import ClaimRejected
from tasks.names import MAX_OBJECT_KEY_BYTES, bucket_problem, object_key_problem

MAX_TEXT_CHARS = 200  # names, versions and ids: enough for any real one, short enough to log whole


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
    """Field `name` as an object key the object store client takes (tasks/names.py)."""
    key = text(data, name, max_chars=MAX_OBJECT_KEY_BYTES)
    problem = object_key_problem(key)
    if problem is not None:
        raise ClaimRejected("invalid_claim", f"{name}: {problem}")
    return key


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
