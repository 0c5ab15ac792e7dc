"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json: the contract, checked against the
running API by tests/e2e/test_openapi_fuzz.py (schemathesis).

Every operation the app serves, every status it can answer with and the headers that go with them.
What only the running process knows is filled in when the document is served: the promoted model's
feature count (a row must have exactly that many numbers), MAX_INSTANCES, MAX_BODY_BYTES and whether
ADMIN_TOKEN guards the admin endpoint. HEAD (for every GET) and OPTIONS are answered by Flask and not
listed; transport-level refusals (a request waitress cannot parse) are described in `info`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tasks.names import BUCKET_PATTERN, OBJECT_KEY_PATTERN
from webapp.downloads import MAX_KEY_BYTES
from webapp.parsing import DEADLINE_HEADER, TIMEOUT_HEADER
from webapp.publish import MAX_COUNT, MAX_KEY_CHARS, MAX_TTL_MS

# The largest finite double: JSON has no NaN or Infinity, and a number beyond this overflows to infinity.
MAX_DOUBLE = 1.7976931348623157e308
# Deadline headers take at most 16 decimal digits (webapp/parsing.py): epoch milliseconds until year 318857.
MAX_DEADLINE_MS = 10**16 - 1


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


ERROR = _ref("schemas", "Error")
JSON = "application/json"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _json(ERROR)}
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


RETRY_AFTER = _header("Seconds to wait before retrying", {"type": "integer", "minimum": 0})
ACCEPT_RANGES = _header("Single byte ranges are served", {"type": "string", "enum": ["bytes"]})


def _retry(description: str) -> dict[str, Any]:
    return _error(description, {"Retry-After": RETRY_AFTER})


# Answers several operations give, and two that belong to no operation (unknown paths, and requests the server
# refuses before routing them), named here so that the document lists every answer the API gives.
_RESPONSES: dict[str, dict[str, Any]] = {
    "MethodNotAllowed": _error(
        "The path does not serve this method; `Allow` lists the methods it does",
        {"Allow": _header("Methods served", {"type": "string"})}),
    "QueueFull": _retry("Too many requests are waiting (the queue or the server's backlog is at its bound): retry after "
                        "`Retry-After` seconds"),
    "ServerRefusal": _error("Answered by the HTTP server before the app, for any path, connection closed after it: 400 a "
                            "request line or header it cannot parse, 413 a body over its own limit, 431 headers too large, "
                            "501 an unsupported Transfer-Encoding"),
    "NotFound": _error("Unknown path (any path not listed here)"),
}
METHOD_NOT_ALLOWED = {"405": _ref("responses", "MethodNotAllowed")}
QUEUE_FULL = {"429": _ref("responses", "QueueFull")}


def _operation(summary: str, responses: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An operation; every one also answers 405 for the methods its path does not serve."""
    return {"summary": summary, **fields, "responses": {**responses, **METHOD_NOT_ALLOWED}}


def _features(n_features: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {"type": "array", "minItems": 1,
                           "items": {"type": "number", "minimum": -MAX_DOUBLE, "maximum": MAX_DOUBLE}}
    if n_features is not None:
        row.update(minItems=n_features, maxItems=n_features)
    return row


def _predict(n_features: int | None, max_instances: int, max_body_bytes: int) -> dict[str, Any]:
    count = (f"exactly {n_features} (the promoted model's feature count, `n_features` of GET /model)"
             if n_features is not None else "the promoted model's feature count (`n_features` of GET /model)")
    deadline_headers = [
        {"name": DEADLINE_HEADER, "in": "header", "required": False,
         "description": "Absolute deadline, epoch milliseconds. With both headers the earlier deadline wins; with "
                        "neither, DEFAULT_TTL_MS from arrival. No request waits longer than INFERENCE_TIMEOUT.",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_DEADLINE_MS}},
        {"name": TIMEOUT_HEADER, "in": "header", "required": False,
         "description": "Relative deadline, milliseconds from arrival; 0 means already expired (504, nothing queued).",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_DEADLINE_MS}},
    ]
    return _operation(
        "Predict for one row (features) or several (instances)",
        description=f"A row is a list of {count} finite numbers. At most MAX_INSTANCES ({max_instances}) instances and "
                    f"MAX_BODY_BYTES ({max_body_bytes}) bytes per request. Duplicate keys: the last one wins.",
        parameters=deadline_headers,
        requestBody={"required": True, "content": _json({"oneOf": [
            {"type": "object", "required": ["features"], "additionalProperties": False,
             "properties": {"features": _features(n_features)}},
            {"type": "object", "required": ["instances"], "additionalProperties": False,
             "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_instances,
                                          "items": _features(n_features)}}},
        ]})},
        responses={
            "200": {"description": "Prediction(s)", "content": _json({"oneOf": [
                _ref("schemas", "Prediction"), _ref("schemas", "Predictions")]})},
            "400": _error("Invalid JSON, wrong shape, unknown field, wrong feature count (also for a body of the right "
                          "shape while the promoted model expects another count), non-finite number, bad deadline header"),
            "413": _error(f"Body larger than MAX_BODY_BYTES ({max_body_bytes}), or more than MAX_INSTANCES ({max_instances}) instances"),
            "415": _error("The body is not declared as JSON (Content-Type: application/json or */*+json)"),
            "422": _error("`non_finite_prediction`: the rows are valid, but the model's output for them is not a finite "
                          "number (an input far outside the range it was fitted on), which JSON cannot carry"),
            **QUEUE_FULL,
            "503": _retry("No model loaded, or Redis unreachable: retry after `Retry-After` seconds"),
            "504": _error("The deadline passed before a result (or had passed on arrival); the work was dropped, never run late"),
        },
    )


def _download() -> dict[str, Any]:
    return _operation(
        "Stream an object from BUCKET_PROCESSED, whole (200) or one byte range (206)",
        parameters=[
            {"name": "object_key", "in": "path", "required": True,
             "description": "The object's key, slashes included: at most 1,024 bytes of UTF-8; relative, no `.` or `..` "
                            "segment (nor one after percent-decoding or Unicode NFKC normalisation), no backslash or "
                            "slash look-alike, no control or format character. The pattern gives the portable subset "
                            "(printable ASCII without `%` and `\\`); keys with letters of other scripts are served too.",
             # A first segment, then any more after slashes; no segment is `.` or `..` (a segment holds a
             # character other than a dot, or three dots or more).
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_BYTES,
                        "pattern": r"^(\.*[\x20-\x24\x26-\x2d\x30-\x5b\x5d-\x7e][\x20-\x24\x26-\x2e\x30-\x5b\x5d-\x7e]*|\.{3,})"
                                   r"(/(\.*[\x20-\x24\x26-\x2d\x30-\x5b\x5d-\x7e][\x20-\x24\x26-\x2e\x30-\x5b\x5d-\x7e]*|\.{3,})?)*$"},
             "example": "demo/features.parquet"},
            {"name": "Range", "in": "header", "required": False,
             "description": "One byte range (`bytes=0-99`, `bytes=100-`, `bytes=-100`); several ranges, or one beyond the "
                            "object, are 416; a malformed value is ignored (RFC 9110) and the whole object served",
             "schema": {"type": "string"}, "example": "bytes=0-99"},
        ],
        responses={
            "200": {"description": "The whole object, with its stored Content-Type",
                    "headers": {"Accept-Ranges": ACCEPT_RANGES,
                                "Content-Length": _header("Object size in bytes", {"type": "integer", "minimum": 0}),
                                "ETag": _header("The object's ETag", {"type": "string"}, required=False)},
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "206": {"description": "One byte range of the object",
                    "headers": {"Accept-Ranges": ACCEPT_RANGES,
                                "Content-Range": _header("`bytes first-last/size`", {"type": "string",
                                                                                       "pattern": r"^bytes [0-9]+-[0-9]+/[0-9]+$"}),
                                "Content-Length": _header("Range length in bytes", {"type": "integer", "minimum": 0}),
                                "ETag": _header("The object's ETag", {"type": "string"}, required=False)},
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "400": _error("Bad key: absolute, a `.` or `..` segment, a backslash or a control character"),
            "404": _error("No such object"),
            "416": _error("Range not satisfiable: several ranges, or one beyond the object", {
                "Content-Range": _header("`bytes */size`", {"type": "string", "pattern": r"^bytes \*/[0-9]+$"}),
                "Accept-Ranges": ACCEPT_RANGES}),
            **QUEUE_FULL,
            "503": _retry("Object storage unreachable: retry after `Retry-After` seconds"),
        },
    )


def _publish(bearer: bool, max_body_bytes: int) -> dict[str, Any]:
    security: dict[str, Any] = {"security": [{"adminToken": []}]} if bearer else {}
    return _operation(
        "Publish `count` claims for one Parquet object to KAFKA_TOPIC_CLAIMS (a test/ops endpoint)",
        description="404 unless ENABLE_TEST_ENDPOINTS; when ADMIN_TOKEN is set, `Authorization: Bearer <ADMIN_TOKEN>` "
                    f"is required (checked before the body). At most {MAX_COUNT} claims per request. With `ttl_ms` every "
                    "claim carries the Kafka header `deadline_ms` = now + ttl_ms. The body is read as JSON whatever its "
                    "Content-Type.",
        **security,
        requestBody={"required": True, "content": _json(_ref("schemas", "ClaimsRequest"))},
        responses={
            "202": {"description": "Published", "content": _json(_ref("schemas", "Published"))},
            "400": _error("Invalid JSON, not an object, unknown field, or a field out of its range"),
            "401": _error("Missing or wrong bearer token (only when ADMIN_TOKEN is set)",
                          {"WWW-Authenticate": _header("The scheme to use", {"type": "string", "const": "Bearer"})}),
            "404": _error("ENABLE_TEST_ENDPOINTS is off"),
            "413": _error(f"Body larger than MAX_BODY_BYTES ({max_body_bytes})"),
            **QUEUE_FULL,
            "503": _retry("Kafka unreachable: retry after `Retry-After` seconds"),
        },
    )


def _schemas() -> dict[str, Any]:
    def strict(required: list[str], **properties: Any) -> dict[str, Any]:
        return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}

    bucket = {"type": "string", "minLength": 3, "maxLength": 63, "pattern": BUCKET_PATTERN,
              "description": "An S3 bucket name (default BUCKET_PROCESSED)"}
    object_key = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": OBJECT_KEY_PATTERN,
                  "description": "The Parquet object each claim names: not blank, no control characters, no `.` or `..` "
                                 "segment"}
    return {
        "Error": strict(["error"], error=strict(
            ["code", "message"], code={"type": "string", "pattern": "^[a-z0-9]+(_[a-z0-9]+)*$"},
            message={"type": "string", "minLength": 1})),
        "Prediction": strict(["prediction", "model_version", "cached"], prediction={"type": "number"},
                             model_version={"type": "string"}, cached={"type": "boolean"}),
        "Predictions": strict(["predictions", "model_version", "cached"],
                              predictions={"type": "array", "minItems": 1, "items": {"type": "number"}},
                              model_version={"type": "string"}, cached={"type": "boolean"}),
        "Model": strict(["model_name", "version", "n_features", "feature_names"], model_name={"type": "string"},
                        version={"type": "string"}, n_features={"type": "integer", "minimum": 1},
                        feature_names={"type": "array", "items": {"type": "string"}}),
        "Health": strict(["status"], status={"const": "ok"}),
        "Readiness": strict(["status", "checks"], status={"enum": ["ready", "not_ready"]},
                            checks={"type": "object", "additionalProperties": {"type": "string"},
                                    "description": "redis, workers, model (when WAIT_FOR_MODEL), draining (while "
                                                   "shutting down): `ok` or what is wrong"}),
        "ClaimsRequest": strict(["count", "object_key"],
                                count={"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
                                ttl_ms={"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TTL_MS},
                                bucket=bucket, object_key=object_key),
        "Published": strict(["published", "topic"], published={"type": "integer", "minimum": 1}, topic={"type": "string"}),
        "OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]},
    }


@lru_cache(maxsize=16)
def openapi_document(*, n_features: int | None, max_instances: int, max_body_bytes: int, bearer: bool) -> dict[str, Any]:
    """The document for a process with these limits; `n_features` None while no model is promoted."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Inference API", "version": "1.0.0", "description": (
            "Backpressure-aware scikit-learn inference: bounded queues, deadlines, load shedding. Every error body is "
            '`{"error": {"code", "message"}}`: also 404 for unknown paths and 405 (with `Allow`) for methods a path '
            "does not serve. Requests the HTTP server cannot parse are refused before the app (400, 413, 431, 501), "
            "with the same body, and the connection closed.")},
        "paths": {
            "/predict": {"post": _predict(n_features, max_instances, max_body_bytes)},
            "/model": {"get": _operation("The model being served", {
                "200": {"description": "Model", "content": _json(_ref("schemas", "Model"))}, **QUEUE_FULL,
                "503": _retry("No model promoted yet: retry after `Retry-After` seconds")})},
            "/healthz": {"get": _operation("Liveness: no I/O, answered by the server's I/O thread, never shed", {
                "200": {"description": "Alive", "content": _json(_ref("schemas", "Health"))}})},
            "/readyz": {"get": _operation("Readiness: Redis, a live worker, the model, not draining; never shed", {
                "200": {"description": "Ready", "content": _json(_ref("schemas", "Readiness"))},
                "503": {**_retry("Not ready, with the failing checks"), "content": _json(_ref("schemas", "Readiness"))}})},
            "/metrics": {"get": _operation("Prometheus metrics; never shed", {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
            "/openapi.json": {"get": _operation("This document", {
                "200": {"description": "OpenAPI 3.1", "content": _json(_ref("schemas", "OpenApi"))}, **QUEUE_FULL})},
            "/download_processed/{object_key}": {"get": _download()},
            "/publish_inference_claims": {"post": _publish(bearer, max_body_bytes)},
        },
        "components": {
            "schemas": _schemas(),
            "responses": _RESPONSES,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "ADMIN_TOKEN, for the test/ops endpoints"}},
        },
    }
