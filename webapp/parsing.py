"""Reading a /predict request: body, shape and deadline headers, before anything touches Redis.

Pure functions of the request's bytes and headers, so every rejection is cheap and unit-testable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from webapp.errors import ApiError

DEADLINE_HEADER = "X-Request-Deadline-Ms"
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
# ASCII digits only: `\d` would also take other scripts' digits, which int() then reads.
_DECIMAL = re.compile(r"[0-9]{1,16}")
_OWS = " \t"  # HTTP's optional whitespace around a field value (RFC 9110)
_KEYS = frozenset({"features", "instances"})


class Headers(Protocol):
    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class PredictRequest:
    rows: list[Any]
    single: bool


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def _reject_constant(name: str) -> float:
    raise bad_request("non_finite_number", f"{name} is not a finite number")


def parse_json(mimetype: str, raw: bytes) -> Any:
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
    return decode_json(raw)


def decode_json(raw: bytes) -> Any:
    """The JSON value in `raw` (UTF-8), or a 400: NaN and Infinity are refused, and so is anything the
    decoder cannot represent (nesting deeper than the interpreter's recursion limit, integers longer than
    its limit on integer digits)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise bad_request("invalid_json", "The body is not valid UTF-8.") from None
    except json.JSONDecodeError as error:
        raise bad_request("invalid_json", f"The body is not valid JSON: {error.msg} at position {error.pos}.") from None
    except ValueError:
        # int() refuses literals over sys.get_int_max_str_digits() (4,300 by default) with a plain ValueError.
        raise bad_request("invalid_json", "The body holds a number with too many digits.") from None
    except RecursionError:
        raise bad_request("invalid_json", "The body is nested too deeply.") from None


def parse_predict(body: Any, max_instances: int) -> PredictRequest:
    """Check the shape: exactly one of `features` (a row) or `instances` (a list of rows)."""
    if not isinstance(body, dict):
        raise bad_request("invalid_request", 'The body must be a JSON object with "features" or "instances".')
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise bad_request("unknown_field", f"Unknown field(s): {', '.join(unknown)[:200]}.")
    if len(body) != 1:
        raise bad_request("invalid_request", 'Send exactly one of "features" or "instances".')
    if "features" in body:
        row = body["features"]
        if not isinstance(row, list) or not row:
            raise bad_request("invalid_request", '"features" must be a non-empty list of numbers.')
        return PredictRequest([row], single=True)
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise bad_request("invalid_request", '"instances" must be a non-empty list of feature rows.')
    if len(rows) > max_instances:
        raise ApiError(413, "too_many_instances", f"At most {max_instances} instances per request (got {len(rows)}).")
    return PredictRequest(rows, single=False)


def _header_ms(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip(_OWS)
    if not _DECIMAL.fullmatch(value):
        raise bad_request("invalid_deadline", f"{name} must be a non-negative integer number of milliseconds.")
    return int(value)


def parse_deadline(headers: Headers, now_ms: int, default_ttl_ms: int) -> int:
    """The request's absolute deadline in epoch milliseconds: the earliest of the headers, else the default."""
    candidates = []
    absolute = _header_ms(headers, DEADLINE_HEADER)
    if absolute is not None:
        candidates.append(absolute)
    relative = _header_ms(headers, TIMEOUT_HEADER)
    if relative is not None:
        candidates.append(now_ms + relative)
    return min(candidates) if candidates else now_ms + default_ttl_ms


class _CgiHeaders:
    """waitress's parsed headers (`X_REQUEST_TIMEOUT_MS`) read by HTTP name (`X-Request-Timeout-Ms`)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def get(self, name: str) -> str | None:
        return self.headers.get(name.upper().replace("-", "_"))


def backlog_deadline(default_ttl_ms: int, inference_timeout_ms: int) -> Callable[[Mapping[str, str], int], int]:
    """The deadline of a request still in the server's backlog (headers as waitress parsed them), as the
    view will compute it; raises ApiError for a malformed deadline header (the view answers it 400)."""

    def deadline(headers: Mapping[str, str], arrived_ms: int) -> int:
        ms = parse_deadline(_CgiHeaders(headers), arrived_ms, default_ttl_ms)
        return min(ms, arrived_ms + inference_timeout_ms)

    return deadline
