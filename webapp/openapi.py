"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"description": _REASONS[status], "content": {"application/json": {"schema": ERROR}}}
            for status in statuses}


_REASONS = {
    400: "Invalid JSON, wrong shape, wrong feature count, non-finite number or bad deadline header",
    401: "Missing or wrong bearer token",
    404: "Not found",
    413: "Body larger than MAX_BODY_BYTES, or more than MAX_INSTANCES instances",
    415: "Body is not JSON",
    416: "Range not satisfiable",
    429: "Queue full: retry after Retry-After seconds",
    503: "No model loaded, or Redis/storage unreachable: retry after Retry-After seconds",
    504: "The deadline passed before a result; the work was dropped, never run late",
}

_NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1}


@cache
def openapi_document() -> dict[str, Any]:
    deadline_headers = [
        {"name": "X-Request-Deadline-Ms", "in": "header", "required": False,
         "description": "Absolute deadline, epoch milliseconds", "schema": {"type": "integer", "minimum": 0}},
        {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
         "description": "Relative deadline, milliseconds from now", "schema": {"type": "integer", "minimum": 0}},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Inference API", "version": "1.0.0",
                 "description": "Backpressure-aware scikit-learn inference: bounded queues, deadlines, load shedding."},
        "paths": {
            "/predict": {"post": {
                "summary": "Predict for one row (features) or several (instances)",
                "parameters": deadline_headers,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "object", "properties": {"features": _NUMBERS}, "required": ["features"],
                     "additionalProperties": False},
                    {"type": "object", "properties": {"instances": {"type": "array", "items": _NUMBERS, "minItems": 1}},
                     "required": ["instances"], "additionalProperties": False},
                ]}}}},
                "responses": {
                    "200": {"description": "Prediction(s)", "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Prediction"}, {"$ref": "#/components/schemas/Predictions"}]}}}},
                    **_errors(400, 413, 415, 429, 503, 504),
                },
            }},
            "/model": {"get": {"summary": "The model being served", "responses": {
                "200": {"description": "Model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                **_errors(503)}}},
            "/healthz": {"get": {"summary": "Liveness, no I/O", "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: Redis, workers and model", "responses": {
                "200": {"description": "Ready"}, "503": {"description": "Not ready, with the failing checks"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Prediction": {"type": "object", "required": ["prediction", "model_version", "cached"], "properties": {
                "prediction": {"type": "number"}, "model_version": {"type": "string"}, "cached": {"type": "boolean"}}},
            "Predictions": {"type": "object", "required": ["predictions", "model_version", "cached"], "properties": {
                "predictions": {"type": "array", "items": {"type": "number"}}, "model_version": {"type": "string"},
                "cached": {"type": "boolean"}}},
            "Model": {"type": "object", "required": ["model_name", "version", "n_features", "feature_names"], "properties": {
                "model_name": {"type": "string"}, "version": {"type": "string"}, "n_features": {"type": "integer"},
                "feature_names": {"type": "array", "items": {"type": "string"}}}},
        }},
    }
