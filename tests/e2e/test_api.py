"""The HTTP API end to end: `python -m webapp` and a real Celery worker over Redis and S3, over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from devtools.processes import ManagedProcess
from tests.e2e.serving import api_with_worker

N_FEATURES = 9
ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]


@pytest.fixture(scope="module")
def api_process(module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    logs = tmp_path_factory.mktemp("api-logs")
    env = {**module_env, "MAX_INSTANCES": "50", "MAX_BODY_BYTES": "65536"}
    with api_with_worker(env, logs) as server:
        yield server


@pytest.fixture(scope="module")
def api(api_process: ManagedProcess) -> str:
    return api_process.url


def test_single_and_batch_predictions(api: str, demo_model: str) -> None:
    single = requests.post(f"{api}/predict", json={"features": ROW}, timeout=10)
    assert single.status_code == 200, single.text
    body = single.json()
    assert isinstance(body["prediction"], float) and body["model_version"] == demo_model and body["cached"] is False
    batch = requests.post(f"{api}/predict", json={"instances": [ROW, ROW, [0.0] * N_FEATURES]}, timeout=10)
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert len(predictions) == 3 and predictions[0] == pytest.approx(body["prediction"])
    assert predictions[2] != predictions[0]


def test_model_probes_and_openapi(api: str, demo_model: str) -> None:
    model = requests.get(f"{api}/model", timeout=5).json()
    assert model["version"] == demo_model and model["n_features"] == N_FEATURES and len(model["feature_names"]) == N_FEATURES
    assert requests.get(f"{api}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "workers": "ok", "model": "ok"}
    spec = requests.get(f"{api}/openapi.json", timeout=5).json()
    assert {"/predict", "/model", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "inference_admission_total" in requests.get(f"{api}/metrics", timeout=5).text


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/predict", 405, "method_not_allowed"),
    ("DELETE", "/model", 405, "method_not_allowed"),
])
def test_unknown_paths_and_wrong_methods_get_the_json_error_body(api: str, method: str, path: str, status: int, code: str) -> None:
    response = requests.request(method, f"{api}{path}", timeout=5)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


JSON = {"Content-Type": "application/json"}
MALFORMED = [
    # (case, headers, raw body, expected status, expected code)
    ("not json", JSON, b"features=1,2", 400, "invalid_json"),
    ("truncated json", JSON, b'{"features": [1, 2', 400, "invalid_json"),
    ("empty body", JSON, b"", 400, "invalid_json"),
    ("invalid utf-8", JSON, b'{"features": ["\xff"]}', 400, "invalid_json"),
    ("text/plain", {"Content-Type": "text/plain"}, json.dumps({"features": ROW}).encode(), 415, "unsupported_media_type"),
    ("form encoded", {"Content-Type": "application/x-www-form-urlencoded"}, b"features=1", 415, "unsupported_media_type"),
    ("no content type", {}, json.dumps({"features": ROW}).encode(), 415, "unsupported_media_type"),
    ("json array", JSON, b"[1, 2, 3]", 400, "invalid_request"),
    ("json string", JSON, b'"features"', 400, "invalid_request"),
    ("empty object", JSON, b"{}", 400, "invalid_request"),
    ("both keys", JSON, json.dumps({"features": ROW, "instances": [ROW]}).encode(), 400, "invalid_request"),
    ("unknown key", JSON, json.dumps({"features": ROW, "model": "x"}).encode(), 400, "unknown_field"),
    ("misspelled key", JSON, json.dumps({"feature": ROW}).encode(), 400, "unknown_field"),
    ("features not a list", JSON, b'{"features": {"a": 1}}', 400, "invalid_request"),
    ("features empty", JSON, b'{"features": []}', 400, "invalid_request"),
    ("too few features", JSON, b'{"features": [1, 2, 3]}', 400, "wrong_feature_count"),
    ("too many features", JSON, json.dumps({"features": ROW + [1.0]}).encode(), 400, "wrong_feature_count"),
    ("string feature", JSON, json.dumps({"features": ROW[:-1] + ["1.0"]}).encode(), 400, "invalid_feature_value"),
    ("null feature", JSON, json.dumps({"features": ROW[:-1] + [None]}).encode(), 400, "invalid_feature_value"),
    ("boolean feature", JSON, json.dumps({"features": ROW[:-1] + [True]}).encode(), 400, "invalid_feature_value"),
    ("NaN", JSON, b'{"features": [NaN, 1, 2, 3, 4, 5, 6, 7, 8]}', 400, "non_finite_number"),
    ("Infinity", JSON, b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, -Infinity]}', 400, "non_finite_number"),
    ("overflowing number", JSON, b'{"features": [1e999, 2, 3, 4, 5, 6, 7, 8, 9]}', 400, "non_finite_number"),
    # Beyond Python's limit on integer digits (4,300), where json.loads raises a plain ValueError.
    ("5,000-digit integer", JSON, b'{"features": [' + b"7" * 5000 + b', 2, 3, 4, 5, 6, 7, 8, 9]}', 400, "invalid_json"),
    ("nested junk", JSON, json.dumps({"features": [[1, [2]], {"x": 1}] + ROW[2:]}).encode(), 400, "invalid_feature_value"),
    ("deep nesting", JSON, b"[" * 5000 + b"]" * 5000, 400, None),
    ("instances empty", JSON, b'{"instances": []}', 400, "invalid_request"),
    ("instances of scalars", JSON, b'{"instances": [1, 2]}', 400, "invalid_request"),
    ("ragged instances", JSON, json.dumps({"instances": [ROW, ROW[:4]]}).encode(), 400, "wrong_feature_count"),
    ("too many instances", JSON, json.dumps({"instances": [ROW] * 51}).encode(), 413, "too_many_instances"),
    ("body over MAX_BODY_BYTES", JSON, b'{"features": [' + b"1," * 40000 + b"1]}", 413, "payload_too_large"),
    ("negative timeout", {**JSON, "X-Request-Timeout-Ms": "-5"}, json.dumps({"features": ROW}).encode(), 400, "invalid_deadline"),
    ("fractional timeout", {**JSON, "X-Request-Timeout-Ms": "1.5"}, json.dumps({"features": ROW}).encode(), 400, "invalid_deadline"),
    ("word deadline", {**JSON, "X-Request-Deadline-Ms": "tomorrow"}, json.dumps({"features": ROW}).encode(), 400, "invalid_deadline"),
    ("negative deadline", {**JSON, "X-Request-Deadline-Ms": "-1"}, json.dumps({"features": ROW}).encode(), 400, "invalid_deadline"),
]


@pytest.mark.parametrize("case, headers, raw, status, code", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_requests_get_a_clear_4xx(api: str, case: str, headers: dict[str, str], raw: bytes,
                                            status: int, code: str | None) -> None:
    response = requests.post(f"{api}/predict", data=raw, headers=headers, timeout=10)
    assert response.status_code == status, f"{case}: {response.status_code} {response.text[:300]}"
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    assert code is None or error["code"] == code
    assert "Traceback" not in response.text


@pytest.mark.parametrize("body", [{"features": [1.7e308] * N_FEATURES}, {"instances": [ROW, [-1.7e308] * N_FEATURES]}],
                         ids=["single row", "instances"])
def test_rows_the_model_cannot_score_are_422(api: str, body: dict[str, object]) -> None:
    # Given finite features so large that the model's output overflows (JSON has no Infinity or NaN)
    response = requests.post(f"{api}/predict", json=body, timeout=10)
    # Then the answer is a 422 with the JSON error body, not a 200 with an invalid JSON body
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "non_finite_prediction"


def test_every_api_log_line_is_a_json_event(api: str, api_process: ManagedProcess) -> None:
    requests.post(f"{api}/predict", json={"features": ROW}, timeout=10).raise_for_status()
    lines = [line for line in api_process.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"ts", "service", "event"} <= set(record) and record["service"] == "webapp" for record in records)
    enqueued = api_process.wait_for_event("queue_enqueued", 60)  # written by the API's log thread
    assert enqueued and all(
        isinstance(e["depth"], int) and e["bounded"] is True and e["maxsize"] == 512 for e in enqueued
    )
    assert not any("features" in line for line in lines), "a request payload leaked into the logs"
