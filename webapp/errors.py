"""The one place where errors become HTTP responses: `{"error": {"code", "message"}}`, never a traceback."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from tasks.errors import InferenceError
from tasks.logs import log_event
from tasks.metrics import ADMISSION
from webapp.server import SHED_KEY

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


def shedder(maxsize: int) -> Callable[..., Iterable[bytes]]:
    """The WSGI answer for a request refused at the HTTP backlog bound (webapp/server.py): 429 with an
    integer Retry-After, without Flask, from the server's I/O thread. Its verdict, (requests waiting,
    Retry-After), is in the environ."""

    def shed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        waiting, retry_after = environ[SHED_KEY]
        ADMISSION.labels("shed_full").inc()
        log_event(log, "queue_job_rejected_full", depth=waiting, maxsize=maxsize, stage="http")
        start_response("429 Too Many Requests", [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(_SHED_BODY))),
                                                 ("Retry-After", str(retry_after))])
        return [_SHED_BODY]

    return shed


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
