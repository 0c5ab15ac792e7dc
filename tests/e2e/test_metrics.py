"""Metrics end to end: an API, a worker node and a bridge over real Redis, S3 and the Kafka-protocol broker,
each scraped on its own port after a little traffic (one /predict, one request past its deadline, a few
claims and one poison record).

Which process serves which metric comes from one place, tasks.metrics.EXPORTED, and the README's metrics
table must say the same: a metric documented but not served, served but not documented, or served by
another process than documented fails here."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.processes import PYTHON, ROOT, ManagedProcess, start_api, start_worker
from devtools.services import Service, free_port
from settings import Settings
from tasks import metrics
from tasks.demo_model import SAMPLE_KEY
from tests.e2e.bridge_support import bridge_env, publish, valid_claims, wait_until
from tests.metric_docs import documented, exported, ours

pytestmark = pytest.mark.e2e

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]
CLAIMS = 3


def scrape(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return ours(response.text)


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """A sample's value (0 when absent), e.g. value(f, "bridge_records_total", outcome="completed")."""
    family = families.get(sample.removesuffix("_total").removesuffix("_count"))
    found = [s.value for s in (family.samples if family else []) if s.name == sample and labels.items() <= s.labels.items()]
    return sum(found)


def offsets(families: dict[str, Any], gauge: str, topic: str) -> dict[int, int]:
    """A per-partition gauge of `topic`, e.g. offsets(f, "bridge_committed_offset", "claims-1")."""
    family = families.get(gauge)
    return {int(s.labels["partition"]): int(s.value) for s in (family.samples if family else []) if s.labels["topic"] == topic}


def up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_each_process_serves_exactly_its_documented_metrics(module_env: dict[str, str], kafka_service: Service,
                                                            settings: Settings, log_dir: Path,
                                                            bridges: Callable[..., ManagedProcess]) -> None:
    # Given the README's metrics table, which names what tasks.metrics.EXPORTED names, process by process
    assert documented() == exported()
    # And a bridge, a worker node and an API, each serving /metrics on a port of its own
    env = bridge_env(module_env, kafka_service.address, maxsize=20, WORKER_METRICS_PORT=str(free_port()))
    bridge = bridges(env, ready=False)
    worker = start_worker(env, log_dir, "--without-mingle", "--without-gossip")
    worker.url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}"
    api = start_api(env, log_dir, free_port())
    try:
        bridge.wait_for(lambda: up(f"{bridge.url}/readyz"), 60, "/readyz 200")
        # When a prediction is made, a request arrives past its deadline, and claims and one poison record arrive
        answer = requests.post(f"{api.url}/predict", json={"features": ROW}, timeout=10)
        assert answer.status_code == 200, answer.text
        late = requests.post(f"{api.url}/predict", json={"features": ROW}, headers={"X-Request-Timeout-Ms": "0"}, timeout=10)
        assert late.status_code == 504, late.text
        prefix = f"metrics-{uuid.uuid4().hex[:6]}"
        topic = env["KAFKA_TOPIC_CLAIMS"]
        ends = publish(kafka_service.address, topic,
                       [*valid_claims(prefix, CLAIMS, settings.bucket_processed, SAMPLE_KEY), (b"poison", b"{not json", [])])

        def settled() -> bool:
            seen = scrape(bridge.url)
            return (value(seen, "bridge_records_total", outcome="completed") >= CLAIMS
                    and value(seen, "bridge_dead_lettered_total", error="invalid_json") == 1
                    and value(seen, "bridge_commits_total", outcome="ok") >= 1
                    and "bridge_consumer_lag" in seen)

        wait_until(settled, 30, "claims completed, the poison record dead-lettered, offsets committed", [bridge, worker])
        wait_until(lambda: offsets(scrape(bridge.url), "bridge_committed_offset", topic) == ends, 60,
                   f"bridge_committed_offset reaches {ends}", [bridge])
        served = {metrics.API: scrape(api.url), metrics.WORKER: scrape(worker.url), metrics.BRIDGE: scrape(bridge.url)}
        lag = subprocess.run([PYTHON, "-m", "bridge.lag", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    finally:
        api.stop()
        worker.stop()
    # Then each process serves exactly its metrics, each with samples
    for process, families in served.items():
        assert set(families) == metrics.names(process), process
        # And every label value known at start-up, 0 or more, not missing
        for metric, label_sets in metrics.initial_labels(process, settings).items():
            shown = {tuple(s.labels[n] for n in metric._labelnames) for s in families[metrics.family_name(metric)].samples}
            assert set(label_sets) <= shown, (process, metric)
    # And the traffic shows where it should: queue wait measured on both lanes, the late request counted
    # as expired at admission, the poison record in the DLQ count, lag per partition of the claims topic
    worker_side, api_side, bridge_side = served[metrics.WORKER], served[metrics.API], served[metrics.BRIDGE]
    for lane in (settings.celery_queue, settings.celery_batch_queue):
        assert value(worker_side, "inference_queue_wait_seconds_count", queue=lane) >= 1, lane
    assert value(api_side, "inference_expired_total", stage="admission") == 1
    assert value(api_side, "inference_admission_total", outcome="shed_deadline") == 1
    assert value(bridge_side, "bridge_dead_lettered_total") == value(bridge_side, "bridge_records_total", outcome="dead_lettered") == 1
    assert all(s.value >= 0 for s in bridge_side["bridge_consumer_lag"].samples)
    # And the per-partition offsets are the ones `python -m bridge.lag` prints (Tansu reports end offsets low:
    # the two agree, whatever the broker says)
    assert lag.returncode == 0, lag.stderr
    printed = [json.loads(line) for line in lag.stdout.splitlines()]
    assert {row["partition"]: (row["committed"], row["end"], row["lag"]) for row in printed} == {
        partition: (committed, offsets(bridge_side, "bridge_end_offset", topic)[partition],
                    offsets(bridge_side, "bridge_consumer_lag", topic)[partition])
        for partition, committed in offsets(bridge_side, "bridge_committed_offset", topic).items()}
    assert {s.labels["queue"] for s in api_side["inference_queue_depth"].samples} == {settings.celery_queue, settings.celery_batch_queue}
    assert "inference_backlog" in api_side
