"""The one place where errors become HTTP responses: `{"error": {"code", "message"}}`, never a traceback."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from tasks.errors import InferenceError
from tasks.logs import LogBudget, log_event
from tasks.metrics import ADMISSION
from webapp.http.serve import Refusal

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response


# Refusals are logged one a line until REJECTION_LOG_BURST in a second, then left out (and counted in the
# next line's `suppressed`) for the rest of that second: `inference_admission_total` counts every one.
REJECTION_LOG_BURST = 100
_rejections = LogBudget(burst=REJECTION_LOG_BURST, per_s=1.0)


def count_rejected(depth: int, maxsize: int, **fields: Any) -> None:
    """A request refused at a bound: counted (`shed_full`) and logged `queue_job_rejected_full` within the
    per-second budget."""
    ADMISSION.labels("shed_full").inc()
    suppressed = _rejections.take()
    if suppressed is not None:
        if suppressed:
            fields["suppressed"] = suppressed
        log_event(log, "queue_job_rejected_full", depth=depth, maxsize=maxsize, **fields)


def backlog_refusal(maxsize: int) -> Callable[[int, int], Refusal]:
    """The answer to a request refused at the HTTP backlog bound (webapp/admission.py), given (requests
    waiting, Retry-After seconds): 429 with the contract's body and an integer Retry-After. Written by
    the server's I/O thread straight after reading the request: no WSGI environ, no Flask."""

    def refusal(waiting: int, retry_after: int) -> Refusal:
        count_rejected(waiting, maxsize, stage="http")
        return "429 Too Many Requests", [("Content-Type", "application/json"), ("Retry-After", str(retry_after))], _SHED_BODY

    return refusal


_SHED_BODY = json.dumps({"error": {"code": "queue_full",
                                   "message": "Too many requests are waiting; retry later."}}).encode()


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(InferenceError)
    def _inference_error(error: InferenceError) -> Response:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return error_response(error.status, error.code, error.message, headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = {413: "payload_too_large", 415: "unsupported_media_type"}.get(status, _snake(error.name))
        message = (error.description or error.name).split("\n")[0]
        response = error_response(status, code, message)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"event": "http_internal_error"})
        return error_response(500, "internal_error", "The server failed to handle the request.")
