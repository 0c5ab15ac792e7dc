"""How the server answers a request: the WSGI task (the app's answer, or a refusal at the backlog bound
without the app) and the error task (waitress's own refusals, as the contract's JSON error body)."""

from __future__ import annotations

import json
import time
from typing import Any

from waitress.task import ErrorTask, WSGITask

# WSGI environ key: when the request arrived (epoch ms): the kernel's receive time of the data that
# completed it, or, where sockets carry no receive timestamp, when it was read in full.
ARRIVED_KEY = "inference.arrived_ms"


class MarkedTask(WSGITask):
    """waitress's WSGI task, passing the request's arrival time to the app; a request refused at the
    backlog bound is answered with the server's `refusal` instead, without the app (like waitress's own
    `ErrorTask`): under overload most requests are refusals, and building a WSGI environ and calling
    through the middleware for each took CPU the admitted requests needed."""

    def service(self) -> None:
        queued_at = getattr(self.request, "queued_at", None)
        policy = getattr(self.channel.server.task_dispatcher, "policy", None)
        if queued_at is not None and policy is not None:  # a request thread takes it from the backlog
            policy.waited.taken(time.monotonic() - queued_at)
        super().service()

    def execute(self) -> None:
        verdict = getattr(self.request, "refused", None)
        if verdict is None:
            super().execute()
            return
        status, headers, body = self.channel.server.refusal(*verdict)
        self.status = status
        self.response_headers.extend(headers)
        self.content_length = len(body)
        self.complete = True  # what start_response marks
        self.write(body)

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[ARRIVED_KEY] = getattr(self.request, "arrived_ms", None)
        return environ


# waitress's own refusals, answered before the app sees the request: (status line, code, message) by
# waitress's status. A transfer coding waitress does not implement (RFC 9112 suggests 501) is answered 400:
# it comes from the client, and a 5xx would page whoever watches this service's server errors.
_WAITRESS_REFUSALS = {
    400: ("400 Bad Request", "bad_request", None),
    413: ("413 Request Entity Too Large", "payload_too_large", "The request body is too large."),
    431: ("431 Request Header Fields Too Large", "request_header_fields_too_large", None),
    501: ("400 Bad Request", "unsupported_transfer_encoding", "Only the chunked Transfer-Encoding is supported."),
    500: ("500 Internal Server Error", "internal_error", "The server failed to handle the request."),
}


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it could not parse (a bad request line or header, a body over its
    limit, headers too large, an unsupported Transfer-Encoding) or whose answer failed, with the contract's
    JSON error body instead of waitress's plain text. The connection is closed after it, as waitress does:
    what follows a request that could not be framed cannot be trusted."""

    def execute(self) -> None:
        error = self.request.error
        status, code, message = _WAITRESS_REFUSALS.get(error.code, _WAITRESS_REFUSALS[400])
        if message is None:
            message = _waitress_words(error.reason, str(error.body or ""))
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.status = status
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def _waitress_words(reason: str, detail: str) -> str:
    """waitress's reason and detail ("Bad Request: Invalid header."), cut before any input it quotes
    ('Malformed header line "..."'): an error body never echoes the request."""
    detail = " ".join(detail.split('"', 1)[0].split())[:200].rstrip(" .:")
    return f"{reason}: {detail}." if detail else f"{reason}."


