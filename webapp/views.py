"""HTTP endpoints: each view parses, calls the gateway or the core, and serialises. Nothing more."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from tasks.errors import InvalidInput
from tasks.inference import validate_rows
from tasks.logs import log_event, now_ms
from tasks.metrics import ADMISSION, EXPIRED, REQUEST_LATENCY
from webapp.errors import ApiError
from webapp.gateway import Gateway
from webapp.http import ARRIVED_KEY
from webapp.openapi import openapi_document
from webapp.parsing import parse_deadline, parse_json, parse_predict

api = Blueprint("api", __name__)
log = logging.getLogger(__name__)


def gateway() -> Gateway:
    return current_app.extensions["gateway"]


def model_unavailable() -> ApiError:
    return ApiError(503, "model_unavailable", "No model is loaded yet; retry shortly.", {"Retry-After": "1"})


@api.post("/predict")
def predict() -> Response:
    gw = gateway()
    settings = gw.settings
    # Deadlines count from when the request was read, not from when a thread took it from the backlog.
    now = request.environ.get(ARRIVED_KEY) or now_ms()
    # 1. Body and headers: 415, 413, 400. Nothing has touched Redis yet.
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        ADMISSION.labels("invalid").inc()
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
    try:
        parsed = parse_predict(parse_json(request.mimetype, request.get_data(cache=False)), settings.max_instances)
        deadline_ms = parse_deadline(request.headers, now, settings.admission_ttl_ms)
        info = gw.model_info()
        if info is None:
            raise model_unavailable()
        validate_rows(parsed.rows, info.n_features)
    except InvalidInput as error:
        ADMISSION.labels("invalid").inc()
        raise ApiError(400, error.code, error.message) from None
    except ApiError as error:
        ADMISSION.labels("invalid" if error.status < 500 else "unavailable").inc()
        raise
    # 2. A deadline already reached: 504 without enqueuing. Nobody waits past INFERENCE_TIMEOUT.
    wait_limit_ms = now + int(settings.inference_timeout * 1000)
    deadline_ms = min(deadline_ms, wait_limit_ms) if settings.enable_ttl else wait_limit_ms
    if deadline_ms <= now_ms():
        ADMISSION.labels("shed_deadline").inc()
        EXPIRED.labels("admission").inc()
        raise ApiError(504, "deadline_exceeded", "The request's deadline had passed before it could be queued.")
    # 3. Redis unreachable: 503. A busy queue answers repeated inputs from the cache; at the bound, 429.
    sample = gw.sample_queue()
    if gw.cache.applies(sample.depth):
        key = gw.cache.key(info.version, parsed.rows)
        cached = gw.cache.get(key)
        if cached is not None:
            ADMISSION.labels("cached").inc()
            log_event(log, "served_cached", key=key)
            return prediction_response(parsed.single, cached, info.version, cached=True)
    gw.check_bound(sample)
    # 4. Enqueue and wait, at most until the deadline. Single rows share micro-batches.
    if parsed.single and gw.batcher is not None:
        try:
            prediction, version = gw.predict_one(parsed.rows[0], deadline_ms, sample.depth)
        except InvalidInput as error:  # 400, or 422 for a prediction that is not a finite number
            raise ApiError(error.status, error.code, error.message) from None
        return prediction_response(True, [prediction], version, cached=False)  # the batch cached it
    outcome = gw.predict(parsed.rows, deadline_ms, sample.depth)
    if outcome.expired:
        raise ApiError(504, "deadline_exceeded", "The request's deadline passed while it was queued; it was not run.")
    if not outcome.ok:
        raise outcome.result if isinstance(outcome.result, Exception) else RuntimeError("inference failed")
    predictions, version = outcome.result["predictions"], outcome.result["model_version"]
    if gw.cache.stores(sample.depth):
        gw.cache.put(gw.cache.key(version, parsed.rows), predictions)
    return prediction_response(parsed.single, predictions, version, cached=False)


def prediction_response(single: bool, predictions: list[float], version: str, *, cached: bool) -> Response:
    if single:
        return jsonify(prediction=predictions[0], model_version=version, cached=cached)
    return jsonify(predictions=predictions, model_version=version, cached=cached)


@api.get("/model")
def model() -> Response:
    info = gateway().model_info()
    if info is None:
        raise model_unavailable()
    return jsonify(info.public())


@api.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@api.get("/readyz")
def readyz() -> Response:
    checks = gateway().readiness()
    ready = all(value == "ok" for value in checks.values())
    response = jsonify(status="ready" if ready else "not_ready", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "1"  # like every other 503 of the API: when to ask again
    return response


@api.get("/openapi.json")
def openapi() -> Response:
    gw = gateway()
    info = gw.model_info()
    settings = gw.settings
    return jsonify(openapi_document(n_features=info.n_features if info else None, max_instances=settings.max_instances,
                                    max_body_bytes=settings.max_body_bytes, bearer=settings.admin_token is not None))


@api.get("/metrics")
def metrics() -> Response:
    return Response(current_app.extensions["metrics"].render(), mimetype=CONTENT_TYPE_LATEST)


@api.before_app_request
def _started() -> None:
    request.environ["inference.started"] = time.perf_counter()


@api.after_app_request
def _observed(response: Response) -> Response:
    started = request.environ.get("inference.started")
    if started is not None:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUEST_LATENCY.labels(endpoint, str(response.status_code)).observe(time.perf_counter() - started)
    return response
