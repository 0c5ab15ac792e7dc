"""The training task against real storage: a candidate is fitted, stored with metrics, not promoted."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from settings import Settings
from tasks.celery_config import create_celery
from tasks.model_store import ModelStore
from tasks.storage import ObjectStore


def parquet(columns: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    settings = base_settings.model_copy(update={"bucket_mlflow": f"mlflow-{suffix}", "bucket_promotion": f"promo-{suffix}"})
    store = ObjectStore(settings)
    for bucket in (settings.bucket_mlflow, settings.bucket_promotion, settings.bucket_processed):
        store.ensure_bucket(bucket)
    return settings


def test_a_training_announcement_stores_a_candidate_without_promoting_it(settings: Settings) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    data = parquet({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": x @ np.array([1.0, -2.0, 0.5]) + 3})
    store = ObjectStore(settings)
    store.put_bytes(settings.bucket_processed, "train/run-1.parquet", data)
    app = create_celery(settings, main="test-training")
    from tasks import training  # noqa: F401 - registers the task

    task = app.tasks["tasks.train_candidate"]
    first = task.apply(args=["run 1", settings.bucket_processed, "train/run-1.parquet"]).get(timeout=30)
    again = task.apply(args=["run 1", settings.bucket_processed, "train/run-1.parquet"]).get(timeout=30)
    assert first["trained"] is True and first["metrics"]["r2_holdout"] > 0.99
    assert again["trained"] is False  # a redelivered announcement changes nothing
    models = ModelStore(settings, store)
    pointer = models.stored("demand-forecast", "run-run-1")
    assert pointer is not None and models.current() is None
    loaded = models.load(pointer)
    assert loaded.info.feature_names == ("a", "b", "c")
    assert loaded.predict(np.array([[1.0, 1.0, 1.0]])) == pytest.approx([2.5], abs=0.05)


def test_training_data_without_a_target_fails_permanently(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.put_bytes(settings.bucket_processed, "train/bad.parquet", parquet({"a": np.arange(20.0)}))
    app = create_celery(settings, main="test-training")
    from tasks import training  # noqa: F401

    result = app.tasks["tasks.train_candidate"].apply(args=["bad", settings.bucket_processed, "train/bad.parquet"])
    assert result.failed() and getattr(result.result, "code", None) == "schema_mismatch"
