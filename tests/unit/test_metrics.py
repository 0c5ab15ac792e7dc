"""tasks/metrics.py: each process serves its own metrics, documented in the README, with the label values
known at start-up at 0; the queue-wait measure."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from bridge.claim import parse_claim
from bridge.dispatch import DLQ_CODES
from bridge.errors import ClaimRejected
from settings import Settings
from tasks import metrics
from tasks.queue_wait import ENQUEUED_HEADER, waited_s
from tests.metric_docs import documented, documented_types, exported, ours

pytestmark = pytest.mark.unit

DECLARED = {value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)}


def test_the_readme_table_documents_exactly_what_each_process_exports() -> None:
    # Given the README's metrics table and tasks.metrics.EXPORTED, Then they name the same metrics per process
    assert documented() == exported()
    # And each with its type
    assert documented_types() == {metrics.series_name(m): m._type for m in DECLARED}


def test_every_declared_metric_is_served_by_some_process() -> None:
    assert {metric for served in metrics.EXPORTED.values() for metric in served} == DECLARED


@pytest.mark.parametrize("process", sorted(metrics.EXPORTED))
def test_every_labelled_metric_has_its_label_sets_at_start_up_or_says_when_they_come(process: str) -> None:
    initial = metrics.initial_labels(process, Settings())
    for metric in metrics.EXPORTED[process]:
        if metric._labelnames:
            assert metric in initial or metric in metrics.LATER_LABELS, metric
    assert set(initial) <= set(metrics.EXPORTED[process])


@pytest.mark.parametrize("process", [metrics.API, metrics.BRIDGE])
def test_a_process_registry_serves_its_metrics_and_no_others(process: str) -> None:
    # Given a process initialised at start-up
    metrics.initialise(process, Settings())
    # When its registry is rendered
    families = ours(generate_latest(metrics.registry(process)).decode())
    # Then it holds exactly its metrics, all of them but those whose labels come later; each label set known
    # at start-up is there
    later = {metrics.family_name(m) for m in metrics.LATER_LABELS}
    assert set(families) - later == metrics.names(process) - later
    for metric, label_sets in metrics.initial_labels(process, Settings()).items():
        shown = {tuple(s.labels[n] for n in metric._labelnames) for s in families[metrics.family_name(metric)].samples}
        assert set(label_sets) <= shown, metric


def test_the_dlq_error_labels_cover_every_code_the_bridge_writes() -> None:
    codes = set(DLQ_CODES) | {"task_failed"}
    for value, headers in [(None, []), (b"[]", []), (b'{"claim_id": "a", "bucket": "b", "object_key": "c"}', [("deadline_ms", b"x")])]:
        with pytest.raises(ClaimRejected) as rejected:
            parse_claim(value, headers)
        codes.add(rejected.value.code)
    assert codes <= set(metrics.DLQ_ERRORS)


def test_queue_wait_counts_from_the_enqueue_stamp_or_the_eta() -> None:
    # Given a message stamped 1.5 s before the task starts
    started = 1_000.0
    request = SimpleNamespace(**{ENQUEUED_HEADER: 998_500, "eta": None})
    assert waited_s(request, started) == pytest.approx(1.5)
    # And a retry due 0.25 s before it starts: the countdown is not queue wait
    eta = datetime.fromtimestamp(started - 0.25, tz=UTC).isoformat()
    assert waited_s(SimpleNamespace(**{ENQUEUED_HEADER: 990_000, "eta": eta}), started) == pytest.approx(0.25)
    # And clock skew never makes it negative; an unstamped message has none
    assert waited_s(SimpleNamespace(**{ENQUEUED_HEADER: 1_000_500}), started) == 0.0
    assert waited_s(SimpleNamespace(), started) is None
