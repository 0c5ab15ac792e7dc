"""The Kafka record fuzzer, end to end: adversarial records (tests/e2e/fuzz_records.py) interleaved with
valid claims on every partition of the claims topic, and bad records on both model topics, against one
real bridge process and a worker.

At the end: the bridge is the process it was (never restarted); every valid claim has its result object;
every bad record is on the DLQ once, with the code its kind determines and its original key, value and
headers; expired claims were skipped, never computed; the committed offsets are at the ends of what was
produced. A few hundred records in `make test`, a few thousand in `make fuzz`; the seed is fixed and named
in every failure (KAFKA_FUZZ_SEED replays another)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from devtools.processes import ManagedProcess
from devtools.services import Service
from settings import Settings
from tasks.demo_model import SAMPLE_KEY
from tests.e2e import fuzz_records
from tests.e2e.bridge_support import (
    bridge_env,
    computed_claims,
    publish,
    results,
    same_process,
    wait_committed,
    wait_records,
    wait_until,
)
from tests.e2e.fuzz_records import FUZZ_ID, Fuzzed
from tests.fuzzing import scaled

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("KAFKA_FUZZ_SEED", "1515"))
CLAIMS = scaled(300, 3_000)  # claims-topic records, a third of them valid
MODEL_RECORDS = scaled(20, 200)  # bad records per model topic
TIMEOUT_S = scaled(120, 1_200)  # for everything to be finished and committed, on a loaded 2-core machine
# Headers the DLQ writes itself: an original header of these names is replaced, not kept.
ADDED = {"error", "error_message", "source_topic"}


def test_the_bridge_survives_adversarial_records(module_env: dict[str, str], kafka_service: Service,
                                                 settings: Settings, worker: ManagedProcess,
                                                 bridges: Callable[..., ManagedProcess]) -> None:
    started = time.monotonic()
    try:
        summary = fuzz(module_env, kafka_service.address, settings, worker, bridges)
    except AssertionError as error:
        raise AssertionError(f"seed {SEED} (KAFKA_FUZZ_SEED={SEED} replays it): {error}") from None
    print(f"\n[kafka fuzz] seed {SEED}, {time.monotonic() - started:.0f} s: {summary}")


def fuzz(module_env: dict[str, str], kafka: str, settings: Settings, worker: ManagedProcess,
         bridges: Callable[..., ManagedProcess]) -> str:
    # Given one bridge and its worker
    rng = random.Random(SEED)
    prefix = f"fz{SEED}-{uuid.uuid4().hex[:6]}"
    env = bridge_env(module_env, kafka, maxsize=64)
    bridge = bridges(env)
    pid = bridge.pid
    watch = [bridge, worker]
    topics = {"claims": env["KAFKA_TOPIC_CLAIMS"], "selected": env["KAFKA_TOPIC_MODEL_SELECTED"],
              "training": env["KAFKA_TOPIC_MODEL_TRAINING"]}
    # When adversarial records arrive on every partition of the claims topic, and on both model topics
    sent = {
        "claims": fuzz_records.claims(rng, CLAIMS, prefix, settings.bucket_processed, SAMPLE_KEY),
        "selected": fuzz_records.model_records(rng, MODEL_RECORDS, prefix, "selected", settings.bucket_mlflow),
        "training": fuzz_records.model_records(rng, MODEL_RECORDS, prefix, "training", settings.bucket_processed),
    }
    ends = {name: publish(kafka, topics[name], [(r.key, r.value, r.headers) for r in records],
                          partitions=4 if name == "claims" else 1)
            for name, records in sent.items()}
    records = [record for batch in sent.values() for record in batch]
    bad = {record.fuzz_id: record for record in records if record.outcome == "dlq"}
    valid = {record.claim_id for record in records if record.outcome == "computed"}
    expired = {record.claim_id for record in records if record.outcome == "expired"}
    # Then every offset is committed up to the end of what was produced (so every DLQ write was acknowledged)
    for name, topic in topics.items():
        wait_committed(kafka, env["KAFKA_GROUP_ID"], topic, ends[name], watch, timeout_s=TIMEOUT_S)
    # And every bad record is on the DLQ once, as it was, with the code of its kind
    dlq = wait_records(kafka, env["KAFKA_TOPIC_DLQ"], len(bad), watch, timeout_s=60)
    by_id = Counter(dict(record.headers).get(FUZZ_ID) for record in dlq)
    assert set(by_id) == set(bad), f"dead-lettered but valid: {sorted(set(by_id) - set(bad))[:5]}; " \
                                   f"bad but not dead-lettered: {[bad[i].kind for i in set(bad) - set(by_id)][:5]}"
    assert max(by_id.values()) == 1, f"dead-lettered twice: {[i for i, n in by_id.items() if n > 1][:5]}"
    for record in dlq:
        check_dead_letter(record, bad[dict(record.headers)[FUZZ_ID]], topics)
    assert len(bridge.events("claim_dead_lettered")) == len(bad)
    # And every valid claim was computed, and no expired one ever was
    wait_until(lambda: results(settings, prefix) >= valid, 60, "every valid claim has a result object", watch)
    assert not results(settings, prefix) & expired
    assert not set(computed_claims(worker, prefix)) & expired
    assert {e["key"] for e in bridge.events("ttl_expired")} >= expired
    # And it was the same bridge process throughout, which never logged a traceback
    same_process(bridge, pid)
    assert "Traceback" not in bridge.output()
    kinds = Counter(record.kind for record in records)
    codes = Counter(record.code for record in bad.values())
    return (f"{len(records)} records ({len(valid)} valid claims, {len(expired)} expired, {len(bad)} bad); "
            f"DLQ by code {dict(sorted(codes.items()))}; by kind {dict(sorted(kinds.items()))}")


def check_dead_letter(record: Any, sent: Fuzzed, topics: dict[str, str]) -> None:
    """The DLQ record is the original (key, value, headers in order) plus error, error_message and, for a
    model topic, source_topic; its code is the one the record's kind determines."""
    what = f"{sent.kind!r} ({sent.fuzz_id.decode()})"
    headers = dict(record.headers)
    assert headers["error"].decode() == sent.code, f"{what}: {headers['error']!r}, not {sent.code}"
    assert headers["error_message"], f"{what}: no error_message"
    assert record.key == sent.key and record.value == sent.value, f"{what}: key or value changed"
    kept = [(name, value) for name, value in sent.headers if name not in ADDED]
    assert [(name, value) for name, value in record.headers if name not in ADDED] == kept, f"{what}: headers changed"
    source = headers.get("source_topic")
    assert source == (None if sent.topic == "claims" else topics[sent.topic].encode()), f"{what}: source_topic {source!r}"
