"""Poison records against the real bridge process: a record that cannot be parsed goes to the DLQ and the
bridge goes on (same process, offset committed past it); a valid record whose effect meets an unreachable
service is held and read again, never dead-lettered.

Real processes: `python -m bridge`, a Celery worker (for the claims), the Tansu broker, Redis and S3."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from devtools.processes import ManagedProcess
from devtools.services import Service
from settings import Settings
from tasks.demo_model import FEATURES, MODEL_NAME, SAMPLE_KEY, train
from tasks.inference import ModelInfo
from tasks.model_store import ModelStore
from tasks.storage import ObjectStore
from tests.e2e.bridge_support import (
    bridge_env,
    publish,
    results,
    same_process,
    valid_claims,
    wait_committed,
    wait_records,
    wait_until,
)
from tests.e2e.fault_support import TcpProxy

pytestmark = pytest.mark.e2e

DEPTH = 50_000  # far past the interpreter's recursion limit (1,000): json.loads raises RecursionError
DEEP_ARRAY = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH


def dead_letters(kafka: str, env: dict[str, str], count: int, bridge: ManagedProcess) -> list[Any]:
    return wait_records(kafka, env["KAFKA_TOPIC_DLQ"], count, [bridge])


def running_bridge(module_env: dict[str, str], kafka_service: Service,
                   bridges: Callable[..., ManagedProcess]) -> tuple[str, dict[str, str], ManagedProcess, int]:
    """A bridge on the suite's broker with at most 10 claims in flight: the broker's address, the bridge's
    environment, the process and its pid (to show at the end that it is the same process)."""
    kafka = kafka_service.address
    env = bridge_env(module_env, kafka, maxsize=10)
    bridge = bridges(env)
    return kafka, env, bridge, bridge.pid


def test_a_claim_nested_50000_deep_is_dead_lettered_and_the_bridge_goes_on(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, worker: ManagedProcess,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a running bridge
    kafka, env, bridge, pid = running_bridge(module_env, kafka_service, bridges)
    prefix = f"deep-{uuid.uuid4().hex[:6]}"
    # When claims nested 50,000 deep (an array, an object) arrive, and a record with neither key nor value (which
    # kafka-python's producer refuses to write, so to the DLQ too), each followed by a valid claim
    poison = [(b"deep-array", DEEP_ARRAY, [("trace", b"t1")]), (b"deep-object", DEEP_OBJECT, []), (None, None, [])]
    valid = valid_claims(prefix, 3, settings.bucket_processed, SAMPLE_KEY)
    ends = publish(kafka, env["KAFKA_TOPIC_CLAIMS"], [poison[0], valid[0], poison[1], valid[1], poison[2], valid[2]])
    # Then all are on the DLQ as invalid_json, with their original key, value and headers
    dlq = dead_letters(kafka, env, 3, bridge)
    assert {record.key: dict(record.headers)["error"] for record in dlq} == {b"deep-array": b"invalid_json",
                                                                              b"deep-object": b"invalid_json",
                                                                              None: b"invalid_json"}
    assert {record.key: record.value for record in dlq} == {key: value for key, value, _ in poison}
    assert dict(next(r for r in dlq if r.key == b"deep-array").headers)["trace"] == b"t1"
    # And the claims after them are computed, and the offsets are committed past everything
    wait_until(lambda: len(results(settings, prefix)) == 3, 60, "the valid claims computed", [bridge, worker])
    wait_committed(kafka, env["KAFKA_GROUP_ID"], env["KAFKA_TOPIC_CLAIMS"], ends, [bridge])
    # And it was the same bridge process throughout
    same_process(bridge, pid)


@pytest.mark.parametrize("topic_variable", ["KAFKA_TOPIC_MODEL_SELECTED", "KAFKA_TOPIC_MODEL_TRAINING"])
def test_a_model_record_nested_50000_deep_is_dead_lettered_and_the_bridge_goes_on(
        topic_variable: str, module_env: dict[str, str], kafka_service: Service,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a running bridge
    kafka, env, bridge, pid = running_bridge(module_env, kafka_service, bridges)
    topic = env[topic_variable]
    # When a model-topic record nested 50,000 deep arrives, then one that is not JSON at all
    ends = publish(kafka, topic, [(b"deep", DEEP_ARRAY, [("trace", b"t1")]), (b"text", b"not json", [])], partitions=1)
    # Then both are on the DLQ as invalid_json, with their original key, value and headers and the topic
    # they came from
    dlq = dead_letters(kafka, env, 2, bridge)
    assert {record.key: dict(record.headers)["error"] for record in dlq} == {b"deep": b"invalid_json",
                                                                              b"text": b"invalid_json"}
    deep = next(record for record in dlq if record.key == b"deep")
    assert deep.value == DEEP_ARRAY
    assert dict(deep.headers)["trace"] == b"t1" and dict(deep.headers)["source_topic"] == topic.encode()
    # And the offsets are committed past them, by the same bridge process
    wait_committed(kafka, env["KAFKA_GROUP_ID"], topic, ends, [bridge])
    same_process(bridge, pid)


class NotUtf8(str):
    """A header key that kafka-python's producer writes as bytes that are not UTF-8 (other clients can)."""

    def encode(self, *_: object, **__: object) -> bytes:
        return b"\xff\xfe-" + str.encode(self)


def test_a_header_key_that_is_not_utf8_stalls_nothing(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, worker: ManagedProcess,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a running bridge
    kafka, env, bridge, pid = running_bridge(module_env, kafka_service, bridges)
    prefix = f"hkey-{uuid.uuid4().hex[:6]}"
    # When records arrive whose header keys are not UTF-8: valid claims, and one that is not JSON
    odd = [(NotUtf8("trace"), b"t1"), (NotUtf8("deadline_ms"), b"not a deadline")]
    valid = valid_claims(prefix, 2, settings.bucket_processed, SAMPLE_KEY, headers=odd)
    ends = publish(kafka, env["KAFKA_TOPIC_CLAIMS"], [valid[0], (b"text", b"not json", odd), valid[1]])
    # Then the claims are computed (an unreadable header name is no header of theirs), the other is on the
    # DLQ as invalid_json, the offsets are committed past all three, by the same bridge process
    wait_until(lambda: len(results(settings, prefix)) == 2, 60, "the valid claims computed", [bridge, worker])
    [record] = dead_letters(kafka, env, 1, bridge)
    assert record.key == b"text" and dict(record.headers)["error"] == b"invalid_json"
    wait_committed(kafka, env["KAFKA_GROUP_ID"], env["KAFKA_TOPIC_CLAIMS"], ends, [bridge])
    same_process(bridge, pid)


def test_a_record_too_large_to_republish_whole_is_dead_lettered_without_its_value(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, worker: ManagedProcess,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a running bridge
    kafka, env, bridge, pid = running_bridge(module_env, kafka_service, bridges)
    prefix = f"large-{uuid.uuid4().hex[:6]}"
    # When a record that is not a claim arrives just under the producer's 1 MiB limit (the DLQ's headers
    # would take it over), then a valid claim
    value = b"x" * (1024 * 1024 - 120)  # with its key and header: 1,048,557 bytes; with the DLQ headers: 1,048,618
    ends = publish(kafka, env["KAFKA_TOPIC_CLAIMS"], [(b"large", value, [("trace", b"t1")]),
                                                      *valid_claims(prefix, 1, settings.bucket_processed, SAMPLE_KEY)])
    # Then it is on the DLQ without its value, saying how large it was, and the claim after it is computed
    [record] = dead_letters(kafka, env, 1, bridge)
    headers = dict(record.headers)
    assert record.key == b"large" and record.value is None
    assert headers["error"] == b"invalid_json" and headers["value_dropped"] == str(len(value)).encode()
    wait_until(lambda: len(results(settings, prefix)) == 1, 60, "the valid claim computed", [bridge, worker])
    wait_committed(kafka, env["KAFKA_GROUP_ID"], env["KAFKA_TOPIC_CLAIMS"], ends, [bridge])
    same_process(bridge, pid)


def test_a_model_selected_record_naming_a_missing_artifact_is_dead_lettered(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, demo_model: str,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a running bridge, and a promoted model
    kafka, env, bridge, _pid = running_bridge(module_env, kafka_service, bridges)
    models = ModelStore(settings, ObjectStore(settings))
    # When a model-selected record names a version whose artifact was never stored
    missing = {"model_name": MODEL_NAME, "version": "never-stored", "bucket": settings.bucket_mlflow,
               "object_key": f"models/{MODEL_NAME}/never-stored-{uuid.uuid4().hex[:6]}/model.joblib"}
    topic = env["KAFKA_TOPIC_MODEL_SELECTED"]
    ends = publish(kafka, topic, [(b"missing", json.dumps(missing).encode(), [])], partitions=1)
    # Then it is on the DLQ as object_missing, the promoted model stays, and its offset is committed
    [record] = dead_letters(kafka, env, 1, bridge)
    assert dict(record.headers)["error"] == b"object_missing"
    assert dict(record.headers)["source_topic"] == topic.encode()
    wait_committed(kafka, env["KAFKA_GROUP_ID"], topic, ends, [bridge])
    current = models.current()
    assert current is not None and current.version == demo_model


def test_a_promotion_is_held_while_storage_is_unreachable_and_applied_when_it_is_back(
        module_env: dict[str, str], kafka_service: Service, bridges: Callable[..., ManagedProcess]) -> None:
    # Given a bridge whose object store sits behind a proxy that can cut it off, with model buckets of its own
    # (the rest of the session keeps its promoted model), and a stored version to promote
    kafka, suffix = kafka_service.address, uuid.uuid4().hex[:8]
    host, port = module_env["S3_ENDPOINT"].rsplit(":", 1)
    proxy = TcpProxy((host, int(port))).start()
    try:
        env = bridge_env({**module_env, "S3_ENDPOINT": proxy.address, "BUCKET_MLFLOW": f"mlflow-{suffix}",
                          "BUCKET_PROMOTION": f"promotion-{suffix}"}, kafka, maxsize=10)
        settings = Settings(redis_url=env["REDIS_URL"], s3_endpoint=module_env["S3_ENDPOINT"],
                            bucket_mlflow=env["BUCKET_MLFLOW"], bucket_promotion=env["BUCKET_PROMOTION"])
        models = ModelStore(settings, ObjectStore(settings))
        models.ensure_buckets()
        estimator, _ = train()
        pointer = models.save(ModelInfo(MODEL_NAME, f"held-{suffix}", len(FEATURES), FEATURES), estimator)
        bridge = bridges(env)
        pid = bridge.pid
        # When the store is unreachable as a model-selected record naming it arrives
        proxy.block()
        topic = env["KAFKA_TOPIC_MODEL_SELECTED"]
        ends = publish(kafka, topic, [(b"promote", json.dumps(pointer.as_json()).encode(), [])], partitions=1)
        # Then the bridge fails to promote it, and tries again
        bridge.wait_for_event("model_promotion_failed", 60, count=2)
        assert models.current() is None
        # And once the store is back, the record is applied and committed, never dead-lettered
        proxy.unblock()
        bridge.wait_for_event("model_selected", 60)
        assert models.current() == pointer
        wait_committed(kafka, env["KAFKA_GROUP_ID"], topic, ends, [bridge])
        assert not bridge.events("claim_dead_lettered")
        assert {e["error"] for e in bridge.events("model_promotion_failed")} == {"storage_unavailable"}
        same_process(bridge, pid)
    finally:
        proxy.stop()
