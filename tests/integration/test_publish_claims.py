"""POST /publish_inference_claims against a real Kafka-protocol broker (Flask test client, real producer)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from pydantic import SecretStr

from devtools.services import Service
from settings import Settings
from tests.e2e.bridge_support import read_all
from webapp import create_app

pytestmark = pytest.mark.integration


def app_for(settings: Settings, **overrides: Any) -> Any:
    return create_app(settings.model_copy(update=overrides), start=False).test_client()


@pytest.fixture
def kafka_settings(base_settings: Settings, kafka_service: Service) -> Settings:
    return base_settings.model_copy(update={"kafka_bootstrap_servers": kafka_service.address,
                                            "kafka_topic_claims": f"publish-{uuid.uuid4().hex[:8]}"})


def read_topic(settings: Settings, count: int, timeout_s: float = 20) -> list[Any]:
    return read_all(settings.kafka_bootstrap_servers, settings.kafka_topic_claims, count, timeout_s)


def test_off_unless_test_endpoints_are_enabled(kafka_settings: Settings) -> None:
    response = app_for(kafka_settings).post("/publish_inference_claims", json={"count": 1, "object_key": "k"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_needs_the_token_when_one_is_set(kafka_settings: Settings) -> None:
    client = app_for(kafka_settings, enable_test_endpoints=True, admin_token=SecretStr("s3cret"))
    body = {"count": 1, "object_key": "k"}
    assert client.post("/publish_inference_claims", json=body).status_code == 401
    wrong = client.post("/publish_inference_claims", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"object_key": "k"}', b'{"count": 0, "object_key": "k"}', b'{"count": true, "object_key": "k"}',
    b'{"count": 1}', b'{"count": 1, "object_key": ""}', b'{"count": 1, "object_key": "k", "ttl_ms": -1}',
    b'{"count": 1, "object_key": "k", "ttl_ms": "5"}', b'{"count": 1, "object_key": "k", "colour": "red"}',
])
def test_bad_bodies_are_400(kafka_settings: Settings, body: bytes) -> None:
    client = app_for(kafka_settings, enable_test_endpoints=True)
    response = client.post("/publish_inference_claims", data=body, content_type="application/json")
    assert response.status_code == 400
    assert set(response.get_json()["error"]) == {"code", "message"}


def test_publishes_claims_with_a_deadline_header(kafka_settings: Settings) -> None:
    # Given the endpoint on, guarded by a token
    client = app_for(kafka_settings, enable_test_endpoints=True, admin_token=SecretStr("s3cret"))
    before = int(time.time() * 1000)
    # When five claims are published with a TTL
    response = client.post("/publish_inference_claims", headers={"Authorization": "Bearer s3cret"},
                           json={"count": 5, "ttl_ms": 60000, "object_key": "demo/features.parquet"})
    # Then the API says so, and the topic holds five claims with deadline_ms headers
    assert response.status_code == 202
    assert response.get_json() == {"published": 5, "topic": kafka_settings.kafka_topic_claims}
    records = read_topic(kafka_settings, 5)
    assert len(records) == 5
    for record in records:
        claim = json.loads(record.value)
        assert claim["bucket"] == kafka_settings.bucket_processed
        assert claim["object_key"] == "demo/features.parquet"
        assert record.key == claim["claim_id"].encode()
        deadline = int(dict(record.headers)["deadline_ms"])
        assert before + 60000 <= deadline <= int(time.time() * 1000) + 60000
    assert len({json.loads(r.value)["claim_id"] for r in records}) == 5


def test_without_ttl_there_is_no_deadline_header(kafka_settings: Settings) -> None:
    client = app_for(kafka_settings, enable_test_endpoints=True)
    response = client.post("/publish_inference_claims", json={"count": 2, "bucket": "other-bucket", "object_key": "k"})
    assert response.status_code == 202
    records = read_topic(kafka_settings, 2)
    assert [dict(r.headers).get("deadline_ms") for r in records] == [None, None]
