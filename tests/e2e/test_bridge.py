"""The bridge end to end: a real Celery worker, `python -m bridge`, the Tansu broker, Redis and S3.

Each test has its own topics and consumer group; the module shares one worker."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from devtools.processes import PYTHON, ROOT, ManagedProcess, start_api
from devtools.services import Service, free_port
from settings import Settings
from tasks.demo_model import FEATURES, MODEL_NAME, SAMPLE_KEY, train
from tasks.inference import ModelInfo
from tasks.model_store import ModelStore
from tasks.storage import ObjectStore
from tests.e2e.bridge_support import (
    InFlightSampler,
    bridge_env,
    committed,
    publish,
    read_all,
    results,
    valid_claims,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_burst_is_bounded_paused_resumed_and_committed(module_env: dict[str, str], kafka_service: Service,
                                                       settings: Settings, worker: ManagedProcess,
                                                       bridges: Callable[..., ManagedProcess]) -> None:
    # Given a bridge bounded at 20 claims in flight
    maxsize, count, prefix = 20, 300, f"burst-{uuid.uuid4().hex[:6]}"
    env = bridge_env(module_env, kafka_service.address, maxsize=maxsize)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    bridge = bridges(env)
    # When a burst of claims arrives at once
    with InFlightSampler(bridge.url) as sampler:
        ends = publish(kafka_service.address, topic, valid_claims(prefix, count, settings.bucket_processed, SAMPLE_KEY))
        # Then every claim ends with a result object, and the committed offsets reach the ends
        wait_until(lambda: len(results(settings, prefix)) == count, 90, "every claim has a result", [bridge, worker])
        wait_until(lambda: committed(kafka_service.address, group, topic) == ends, 60, f"commits reach {ends}", [bridge])
    # And the in-flight count, logged per claim and sampled every 50 ms, never exceeded the bound
    enqueued = bridge.events("queue_enqueued")
    assert len(enqueued) == count
    assert max(e["depth"] for e in enqueued) <= maxsize
    assert all(e["bounded"] is True and e["maxsize"] == maxsize for e in enqueued)
    assert len(sampler.samples) >= 10 and max(sampler.samples) <= maxsize
    # And the bridge paused and resumed its partitions, with depth and pct
    paused, resumed = bridge.events("consumer_paused"), bridge.events("consumer_resumed")
    assert paused and resumed
    assert all(e["topic"] == topic and e["pct"] >= 80 for e in paused)
    assert all(e["pct"] <= 50 for e in resumed)
    assert bridge.events("commit_offsets")
    # And the operator command shows no lag for the group
    lag = subprocess.run([PYTHON, "-m", "bridge.lag", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert lag.returncode == 0, lag.stderr
    rows = [json.loads(line) for line in lag.stdout.splitlines()]
    assert {row["partition"]: row["committed"] for row in rows} == ends
    # And SIGTERM drains and exits 0
    assert bridge.stop() == 0
    assert bridge.events("bridge_stopped")[-1]["unfinished"] == 0


def test_expired_claims_are_skipped_and_generous_ones_computed(module_env: dict[str, str], kafka_service: Service,
                                                               settings: Settings, worker: ManagedProcess,
                                                               bridges: Callable[..., ManagedProcess],
                                                               log_dir: Path) -> None:
    env = bridge_env(module_env, kafka_service.address, maxsize=40, ENABLE_TEST_ENDPOINTS="true", ADMIN_TOKEN="tkn")
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    bridge = bridges(env)
    api = start_api(env, log_dir, free_port())
    try:
        # Given 60 claims published through the API with ttl_ms=1
        response = requests.post(f"{api.url}/publish_inference_claims", headers={"Authorization": "Bearer tkn"},
                                 json={"count": 60, "ttl_ms": 1, "object_key": SAMPLE_KEY}, timeout=30)
        assert response.status_code == 202 and response.json() == {"published": 60, "topic": topic}
        assert api.wait_for_event("publish_claims_ok", 60)[-1]["count"] == 60
        # Then all are logged ttl_expired by the bridge, and their offsets are committed
        expired = lambda: {e["key"] for e in bridge.events("ttl_expired")}  # noqa: E731
        wait_until(lambda: len(expired()) == 60, 30, "60 ttl_expired", [bridge])
        assert all(e["source"] == "bridge" for e in bridge.events("ttl_expired"))
        wait_until(lambda: sum(committed(kafka_service.address, group, topic).values()) == 60, 60,
                   "commits past the 60 expired claims")
        # When claims with a generous TTL follow
        response = requests.post(f"{api.url}/publish_inference_claims", headers={"Authorization": "Bearer tkn"},
                                 json={"count": 40, "ttl_ms": 60_000, "object_key": SAMPLE_KEY}, timeout=30)
        assert response.status_code == 202
    finally:
        api.stop()
    # Then they are all computed, and none of the expired ones ever was
    fresh = lambda: {e["claim_id"] for e in bridge.events("queue_enqueued")}  # noqa: E731
    wait_until(lambda: len(fresh()) == 40, 30, "40 generous claims enqueued", [bridge])
    store = ObjectStore(settings)
    wait_until(lambda: all(store.exists(settings.bucket_logs, f"claims/{c}.json") for c in fresh()), 60,
               "40 generous claims computed", [bridge, worker])
    wait_until(lambda: sum(committed(kafka_service.address, group, topic).values()) == 100, 60, "commits reach 100")
    computed = {e.get("claim_id") for e in worker.events("predict_inference_start")}
    assert not computed & expired()
    assert not any(store.exists(settings.bucket_logs, f"claims/{c}.json") for c in expired())


def test_poison_records_go_to_the_dlq_and_nothing_stalls(module_env: dict[str, str], kafka_service: Service,
                                                         settings: Settings, worker: ManagedProcess,
                                                         bridges: Callable[..., ManagedProcess]) -> None:
    env = bridge_env(module_env, kafka_service.address, maxsize=20)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    prefix = f"poison-{uuid.uuid4().hex[:6]}"
    bucket = settings.bucket_processed
    wrong_key = f"e2e/{prefix}-wrong.parquet"
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), buffer)
    ObjectStore(settings).put_bytes(bucket, wrong_key, buffer.getvalue())
    # Given valid claims interleaved with every kind of poison record, on every partition
    poisons: dict[bytes, str] = {}
    messages = []
    for round_ in range(4):
        kinds = [
            (b"not json", [], "invalid_json"),
            (None, [], "invalid_json"),
            (json.dumps({"claim_id": f"{prefix}-m{round_}"}).encode(), [], "invalid_claim"),
            (json.dumps({"claim_id": f"{prefix}-x{round_}", "bucket": bucket, "object_key": "e2e/missing.parquet"})
             .encode(), [], "object_missing"),
            (json.dumps({"claim_id": f"{prefix}-w{round_}", "bucket": bucket, "object_key": wrong_key}).encode(), [],
             "schema_mismatch"),
            (json.dumps({"claim_id": f"{prefix}-d{round_}", "bucket": bucket, "object_key": SAMPLE_KEY}).encode(),
             [("deadline_ms", b"tomorrow")], "invalid_deadline"),
        ]
        for index, (value, headers, code) in enumerate(kinds):
            key = f"{prefix}-poison-{round_}-{index}".encode()
            poisons[key] = code
            messages.append((key, value, [("trace", b"t1"), *headers]))
            messages.extend(valid_claims(f"{prefix}-ok-{round_}{index}", 1, bucket, SAMPLE_KEY))
    bridge = bridges(env)
    ends = publish(kafka_service.address, topic, messages)
    # Then every poison record is in the DLQ with its code, original key, value and headers
    dlq = read_all(kafka_service.address, env["KAFKA_TOPIC_DLQ"], len(poisons), timeout_s=60)
    assert {record.key: dict(record.headers)["error"].decode() for record in dlq} == poisons
    originals = {key: (value, headers) for key, value, headers in messages}
    for record in dlq:
        headers = dict(record.headers)
        assert record.value == originals[record.key][0]  # a null value stays null
        assert headers["trace"] == b"t1" and headers["error_message"]
    lettered = lambda: {e["key"]: e["error"] for e in bridge.events("claim_dead_lettered")}  # noqa: E731
    wait_until(lambda: len(lettered()) == len(poisons), 60, "claim_dead_lettered for every poison record", [bridge])
    assert lettered() == {key.decode(): code for key, code in poisons.items()}
    # And the valid claims around them are all computed, and no partition stalled
    valid = len(messages) - len(poisons)
    wait_until(lambda: len(results(settings, f"{prefix}-ok")) == valid, 60, "valid claims computed", [bridge, worker])
    wait_until(lambda: committed(kafka_service.address, group, topic) == ends, 60, f"commits reach {ends}", [bridge])


def test_bridge_exits_non_zero_when_kafka_is_unreachable(module_env: dict[str, str], log_dir: Path) -> None:
    env = {**bridge_env(module_env, f"127.0.0.1:{free_port()}", maxsize=10), "STARTUP_TIMEOUT_S": "1"}
    bridge = ManagedProcess("bridge-nokafka", [PYTHON, "-m", "bridge"], env, log_dir).start()
    assert bridge.wait_exit(60) != 0
    last = bridge.output().strip().splitlines()[-1]
    assert "KAFKA_BOOTSTRAP_SERVERS" in last and "unreachable" in last


def test_model_selected_records_switch_every_worker(module_env: dict[str, str], kafka_service: Service,
                                                    settings: Settings, worker: ManagedProcess, demo_model: str,
                                                    bridges: Callable[..., ManagedProcess]) -> None:
    # Given a second version of the model, stored but not promoted
    models = ModelStore(settings, ObjectStore(settings))
    demo = models.current()
    assert demo is not None and demo.version == demo_model
    estimator, _ = train()
    version = f"promoted-{uuid.uuid4().hex[:6]}"
    pointer = models.save(ModelInfo(MODEL_NAME, version, len(FEATURES), FEATURES), estimator)
    env = bridge_env(module_env, kafka_service.address, maxsize=10)
    bridge = bridges(env)
    try:
        # When a model-selected record names it (and a training announcement passes by)
        publish(kafka_service.address, env["KAFKA_TOPIC_MODEL_SELECTED"], [(None, json.dumps(pointer.as_json()).encode(), [])])
        publish(kafka_service.address, env["KAFKA_TOPIC_MODEL_TRAINING"],
                [(None, json.dumps({"run_id": "r1", "bucket": "b", "object_key": "k"}).encode(), [])])
        # Then the bridge promotes it, and both worker processes load it without a restart
        bridge.wait_for_event("model_selected", 60)
        assert models.current() == pointer
        worker.wait_for(lambda: len([e for e in worker.events("model_loaded") if e["version"] == version]) >= 2, 60,
                        f"model_loaded {version} in both worker processes")
        assert bridge.events("model_training_announced")[0]["run_id"] == "r1"
        # And claims from then on are scored by the new version
        prefix = f"promo-{uuid.uuid4().hex[:6]}"
        publish(kafka_service.address, env["KAFKA_TOPIC_CLAIMS"], valid_claims(prefix, 4, settings.bucket_processed,
                                                                               SAMPLE_KEY))
        wait_until(lambda: len(results(settings, prefix)) == 4, 60, "4 claims scored", [bridge, worker])
        store = ObjectStore(settings)
        assert {json.loads(store.get_bytes(settings.bucket_logs, f"claims/{prefix}-{i}.json"))["model_version"]
                for i in range(4)} == {version}
    finally:
        models.promote(demo)  # the rest of the session expects the demo model
        worker.wait_for(lambda: worker.events("model_loaded")[-1]["version"] == demo.version, 60, "demo model back")


def test_a_training_announcement_trains_a_candidate_without_promoting_it(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, worker: ManagedProcess, demo_model: str,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given training data (features plus target) in object storage
    import numpy as np

    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 3))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": x.sum(axis=1)}), buffer)
    key = f"train/{uuid.uuid4().hex[:8]}.parquet"
    ObjectStore(settings).put_bytes(settings.bucket_processed, key, buffer.getvalue())
    env = bridge_env(module_env, kafka_service.address, maxsize=10)
    bridge = bridges(env)
    run_id = f"run-{uuid.uuid4().hex[:6]}"
    # When a model-training record announces it
    publish(kafka_service.address, env["KAFKA_TOPIC_MODEL_TRAINING"],
            [(None, json.dumps({"run_id": run_id, "bucket": settings.bucket_processed, "object_key": key}).encode(), [])])
    # Then a worker trains and stores a candidate, the promoted model stays, and the record's offset is done
    worker.wait_for(lambda: any(e.get("run_id") == run_id for e in worker.events("candidate_trained")), 60,
                    "candidate_trained")
    models = ModelStore(settings, ObjectStore(settings))
    assert models.stored(MODEL_NAME, f"run-{run_id}") is not None
    assert models.current() is not None and models.current().version == demo_model
    enqueued = [e for e in bridge.events("queue_enqueued") if e.get("claim_id") == run_id]
    assert len(enqueued) == 1 and enqueued[0]["depth"] <= 10
    training_topic = env["KAFKA_TOPIC_MODEL_TRAINING"]
    wait_until(lambda: sum(committed(kafka_service.address, env["KAFKA_GROUP_ID"], training_topic).values()) == 1,
               30, "the training record committed", [bridge])
