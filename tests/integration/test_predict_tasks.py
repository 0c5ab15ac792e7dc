"""The predict tasks run in-process (Celery `apply`) against the real model store: a micro-batch keeps
each item's deadline, result and failure."""

from __future__ import annotations

import logging

import pytest

from settings import Settings
from tasks import metrics
from tasks.celery_config import create_celery
from tasks.logs import now_ms

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]


@pytest.fixture
def app(base_settings: Settings, demo_model: str):  # type: ignore[no-untyped-def]
    app = create_celery(base_settings, main="test-tasks")
    from tasks import predict  # noqa: F401 - registers the tasks on the current app

    return app


def expired_count(stage: str) -> float:
    return metrics.registry(metrics.WORKER).get_sample_value("inference_expired_total", {"stage": stage}) or 0.0


def test_a_batch_drops_expired_items_and_fails_invalid_ones_alone(app, demo_model: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    items = [
        {"id": "ok-1", "row": ROW, "deadline_ms": now_ms() + 10_000},
        {"id": "expired", "row": ROW, "deadline_ms": now_ms() - 1},
        {"id": "short", "row": ROW[:3], "deadline_ms": now_ms() + 10_000},
        {"id": "text", "row": ROW[:-1] + ["x"], "deadline_ms": None},
        {"id": "ok-2", "row": [0.0] * 9, "deadline_ms": None},
    ]
    expired_in_worker = expired_count("worker")
    with caplog.at_level(logging.INFO):
        result = app.tasks["tasks.predict_batch"].apply(args=[items]).get(timeout=10)
    assert result["model_version"] == demo_model
    ok1, expired, short, text, ok2 = result["results"]
    assert isinstance(ok1["prediction"], float) and isinstance(ok2["prediction"], float)
    assert expired == {"expired": True}
    assert short["error"]["code"] == "wrong_feature_count" and text["error"]["code"] == "invalid_feature_value"
    # One model call for the two live items; the expired one logged, never run.
    starts = [r for r in caplog.records if getattr(r, "event", "") == "predict_inference_start"]
    assert [r.batch_size for r in starts] == [2]  # type: ignore[attr-defined]
    assert any(getattr(r, "event", "") == "ttl_expired" and r.key == "expired" for r in caplog.records)  # type: ignore[attr-defined]
    assert expired_count("worker") == expired_in_worker + 1


def test_the_single_task_scores_every_row_in_one_call(app, demo_model: str) -> None:  # type: ignore[no-untyped-def]
    result = app.tasks["tasks.predict"].apply(args=[[ROW, ROW]]).get(timeout=10)
    assert result["model_version"] == demo_model and len(result["predictions"]) == 2
