"""Whether an answer keeps the API's contract (`check`; the rules: perf/README.md, "The load client"), for the load
client and the Locust file alike. Standard library only: the Locust container has nothing else of the project."""

from __future__ import annotations

import json
import math
from typing import Any

#: Statuses that are an answer or load shedding when their body is right (what Locust counts as a success).
ACCEPTED = (200, 429, 503)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_body(status: int, body: bytes, retry_after: str) -> tuple[bool, str]:
    data = _json(body)
    error = data.get("error") if isinstance(data, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
        return False, f"{status} without the JSON error body"
    if status in (429, 503):
        if not retry_after.isdigit():
            return False, f"{status} {error['code']} with Retry-After {retry_after!r}"
        return True, f"{error['code']} retry_after={retry_after}"
    return True, error["code"]


def check(kind: str, status: int, body: bytes, retry_after: str = "", sent: bytes = b"") -> tuple[bool, str]:
    """Whether an answer of `status` with `body` to an endpoint of `kind` (predict, healthz, echo, download)
    keeps the contract, and a detail (why not, the error code, or `cached`)."""
    if kind == "echo":
        if status != 200:
            return False, f"echo answered {status}"
        return (True, "") if body == sent else (False, "echo body differs from the request")
    if kind == "healthz":
        data = _json(body)
        ok = status == 200 and isinstance(data, dict) and data.get("status") == "ok"
        return ok, "" if ok else f"healthz answered {status}"
    if status != 200:
        return error_body(status, body, retry_after)
    if kind == "download":
        return (True, "") if body.startswith(b"PAR1") else (False, "download without a Parquet body")
    data = _json(body)
    if not isinstance(data, dict):
        return False, "200 body is not a JSON object"
    prediction = data.get("prediction")
    if not (isinstance(prediction, int | float) and not isinstance(prediction, bool) and math.isfinite(prediction)):
        return False, "200 without a numeric prediction"
    if not isinstance(data.get("model_version"), str) or not data["model_version"]:
        return False, "200 without a model_version string"
    return True, "cached" if data.get("cached") is True else ""
