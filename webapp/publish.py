"""POST /publish_inference_claims: publish `count` claims for one Parquet object (a test/ops endpoint).

Off (404) unless ENABLE_TEST_ENDPOINTS; when ADMIN_TOKEN is set it needs `Authorization: Bearer <token>`.
Body `{"count": int, "ttl_ms": int?, "bucket": str?, "object_key": str}`; with `ttl_ms` every claim
carries the header `deadline_ms` = now + ttl_ms. The Kafka producer is created on first use, so the API
starts (and serves /predict) without Kafka when the endpoint is off or unused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from kafka import KafkaProducer
from kafka.errors import KafkaError

from settings import Settings
from tasks.logs import log_event, now_ms
from tasks.names import MAX_OBJECT_KEY_BYTES, bucket_problem, object_key_problem
from webapp.errors import ApiError
from webapp.parsing import decode_json

log = logging.getLogger(__name__)

publish = Blueprint("publish", __name__)

# Limits of one request (README, /openapi.json): claims published per call, their TTL, and the length of
# the object key named in each, in characters: 256 of them are at most 1,024 bytes of UTF-8 (S3's limit).
MAX_COUNT = 100_000
MAX_TTL_MS = 7 * 24 * 3600 * 1000
MAX_KEY_CHARS = MAX_OBJECT_KEY_BYTES // 4
PUBLISH_TIMEOUT_S = 30.0


class ClaimsPublisher:
    """One lazily created, thread-safe KafkaProducer per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all",
                                               linger_ms=5, bootstrap_timeout_ms=5000, request_timeout_ms=10000,
                                               max_block_ms=10000)
            return self._producer

    def publish(self, count: int, bucket: str, object_key: str, ttl_ms: int | None) -> int:
        topic = self.settings.kafka_topic_claims
        headers = [] if ttl_ms is None else [("deadline_ms", str(now_ms() + ttl_ms).encode())]
        batch = uuid.uuid4().hex[:12]
        producer = self.producer()
        futures = []
        for index in range(count):
            claim_id = f"{batch}-{index}"
            body = {"claim_id": claim_id, "bucket": bucket, "object_key": object_key}
            futures.append(producer.send(topic, key=claim_id.encode(), value=json.dumps(body).encode(),
                                         headers=headers))
        producer.flush(timeout=PUBLISH_TIMEOUT_S)
        for future in futures:
            future.get(timeout=PUBLISH_TIMEOUT_S)
        return count

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


_CREATE = threading.Lock()


def publisher() -> ClaimsPublisher:
    with _CREATE:
        found = current_app.extensions.get("claims_publisher")
        if found is None:
            found = ClaimsPublisher(current_app.extensions["gateway"].settings)
            current_app.extensions["claims_publisher"] = found
        return found


def _authorize(settings: Settings) -> None:
    """401 unless the request carries `Authorization: Bearer <ADMIN_TOKEN>` (the scheme in any case).

    The comparison is of SHA-256 digests with `hmac.compare_digest`: constant time in the token's value and,
    since digests have one length, in its length too."""
    if settings.admin_token is None:
        return
    expected = settings.admin_token.get_secret_value().encode()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        # WSGI hands header values over decoded as latin-1: encoding them back gives the bytes the client
        # sent, so a UTF-8 token matches and any other bytes simply differ.
        given = token.encode("latin-1")
    except UnicodeEncodeError:
        given = b""
    same = hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())
    if not (same and scheme.lower() == "bearer"):
        raise ApiError(401, "unauthorized", "This endpoint needs Authorization: Bearer <ADMIN_TOKEN>.",
                       {"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class ClaimsRequest:
    count: int
    bucket: str
    object_key: str
    ttl_ms: int | None


_FIELDS = frozenset({"count", "ttl_ms", "bucket", "object_key"})


def parse_claims(raw: bytes, default_bucket: str) -> ClaimsRequest:
    """The body of a publish request, or ApiError 400: `count` from 1 to MAX_COUNT, `ttl_ms` (optional,
    null meaning none) from 1 to MAX_TTL_MS, `bucket` (default `default_bucket`) an S3 bucket name and
    `object_key` an object key of at most MAX_KEY_CHARS characters (tasks/names.py: the claims the bridge
    would refuse are refused here), no other field. Pure: the bytes in, a value or ApiError out."""
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ApiError(400, "invalid_request", f"Unknown keys: {', '.join(unknown)[:200]}.")
    count = _integer(body, "count", 1, MAX_COUNT)
    ttl_ms = None if body.get("ttl_ms") is None else _integer(body, "ttl_ms", 1, MAX_TTL_MS)
    bucket = _name(body, "bucket", default_bucket, bucket_problem)
    object_key = _name(body, "object_key", None, object_key_problem)
    if len(object_key) > MAX_KEY_CHARS:
        raise ApiError(400, "invalid_request", f"object_key: at most {MAX_KEY_CHARS} characters.")
    return ClaimsRequest(count, bucket, object_key, ttl_ms)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    # JSON has one number type: 5.0 is the integer 5 (as JSON Schema's "integer" says), though Python reads it as a float.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name} must be an integer from {low} to {high}.")
    return value


def _name(body: dict[str, Any], name: str, default: str | None, problem_of: Callable[[str], str | None]) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"{name} must be a string.")
    problem = problem_of(value)
    if problem is not None:
        raise ApiError(400, "invalid_request", f"{name}: {problem}.")
    return value


@publish.post("/publish_inference_claims")
def publish_inference_claims() -> tuple[Response, int]:
    settings: Settings = current_app.extensions["gateway"].settings
    if not settings.enable_test_endpoints:
        raise ApiError(404, "not_found", "The requested URL was not found on the server.")
    _authorize(settings)
    claim = parse_claims(request.get_data(cache=False), settings.bucket_processed)
    try:
        published = publisher().publish(claim.count, claim.bucket, claim.object_key, claim.ttl_ms)
    except KafkaError as error:
        log.warning("publish failed: %s", type(error).__name__, extra={"event": "publish_claims_failed"})
        raise ApiError(503, "kafka_unavailable", "Kafka is unreachable; retry shortly.", {"Retry-After": "1"}) from None
    topic = settings.kafka_topic_claims
    log_event(log, "publish_claims_ok", topic=topic, count=published, ttl_ms=claim.ttl_ms)
    return jsonify(published=published, topic=topic), 202
