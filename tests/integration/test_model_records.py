"""ModelRecords.select against a real S3 server and Redis: promoted and announced, dead-lettered when the
artifact is not stored, refused for good when it does not load, and ServiceUnavailable (held and read
again by the loop) when the object store or Redis does not answer."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis
from sklearn.linear_model import LinearRegression

from bridge.errors import ClaimRejected, ServiceUnavailable
from bridge.models import ModelRecords
from devtools.services import free_port
from settings import Settings
from tasks.inference import ModelInfo
from tasks.model_store import ModelStore, Pointer
from tasks.serving import PROMOTIONS_CHANNEL
from tasks.storage import ObjectStore


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Model buckets of the test's own: the session's promoted model stays."""
    suffix = uuid.uuid4().hex[:8]
    return base_settings.model_copy(update={"bucket_mlflow": f"mlflow-{suffix}", "bucket_promotion": f"promo-{suffix}"})


@pytest.fixture
def models(settings: Settings) -> ModelStore:
    store = ModelStore(settings, ObjectStore(settings))
    store.ensure_buckets()
    return store


def stored(models: ModelStore, version: str) -> Pointer:
    x = np.arange(40, dtype=float).reshape(20, 2)
    return models.save(ModelInfo("m", version, 2, ("a", "b")), LinearRegression().fit(x, x.sum(axis=1)))


def unreachable(settings: Settings) -> Settings:
    return settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}", "redis_url": f"redis://127.0.0.1:{free_port()}/0"})


def test_a_stored_version_is_promoted_and_announced(models: ModelStore, redis_client: redis.Redis) -> None:
    pointer = stored(models, "v1")
    listener = redis_client.pubsub()
    listener.subscribe(PROMOTIONS_CHANNEL)
    ModelRecords(models, redis_client).select(pointer)
    assert models.current() == pointer
    messages = [listener.get_message(timeout=1) for _ in range(2)]
    assert any(m and m["type"] == "message" for m in messages)
    listener.close()


@pytest.mark.parametrize("missing", ["artifact", "meta", "bucket", "bad bucket name"])
def test_a_version_that_is_not_stored_is_object_missing(models: ModelStore, redis_client: redis.Redis,
                                                        missing: str) -> None:
    pointer = stored(models, "v1")
    store = models.store
    if missing == "artifact":
        store.client.remove_object(pointer.bucket, pointer.object_key)
    elif missing == "meta":
        store.client.remove_object(pointer.bucket, pointer.meta_key)
    else:
        pointer = Pointer("m", "v1", "no-such-bucket" if missing == "bucket" else "B", pointer.object_key)
    with pytest.raises(ClaimRejected) as rejected:
        ModelRecords(models, redis_client).select(pointer)
    assert rejected.value.code == "object_missing"
    assert models.current() is None


def test_an_artifact_that_does_not_load_is_refused_and_the_record_done(models: ModelStore,
                                                                      redis_client: redis.Redis) -> None:
    good = stored(models, "v1")
    models.promote(good)
    corrupt = stored(models, "v2")
    models.store.put_bytes(corrupt.bucket, corrupt.object_key, b"not a pickle")
    ModelRecords(models, redis_client).select(corrupt)  # neither dead-lettered nor held: logged, done
    assert models.current() == good


def test_an_unreachable_object_store_holds_the_record(settings: Settings, models: ModelStore,
                                                      redis_client: redis.Redis) -> None:
    pointer = stored(models, "v1")
    away = unreachable(settings)
    with pytest.raises(ServiceUnavailable):
        ModelRecords(ModelStore(away, ObjectStore(away, timeout_s=1, retries=0)), redis_client).select(pointer)
    assert models.current() is None


def test_an_unreachable_redis_holds_the_record_until_the_promotion_is_announced(
        settings: Settings, models: ModelStore, redis_client: redis.Redis) -> None:
    pointer = stored(models, "v1")
    away = redis.Redis.from_url(unreachable(settings).redis_url, socket_connect_timeout=1)
    # The pointer is written, but workers are not woken: the record is held
    with pytest.raises(ServiceUnavailable):
        ModelRecords(models, away).select(pointer)
    assert models.current() == pointer
    # Read again with Redis back, it is announced and done
    ModelRecords(models, redis_client).select(pointer)
