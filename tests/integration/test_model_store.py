"""The model store against a real S3 server: save, promote, load, and refusing a corrupt artifact."""

import uuid

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from settings import Settings
from tasks.errors import ModelArtifactInvalid
from tasks.inference import ModelInfo
from tasks.model_store import ModelStore
from tasks.serving import PromotedModel
from tasks.storage import ObjectStore


@pytest.fixture
def models(base_settings: Settings) -> ModelStore:
    # Given a model store with buckets of its own
    suffix = uuid.uuid4().hex[:8]
    settings = base_settings.model_copy(update={"bucket_mlflow": f"mlflow-{suffix}", "bucket_promotion": f"promo-{suffix}"})
    store = ModelStore(settings, ObjectStore(settings))
    store.ensure_buckets()
    return store


def fitted(n_features: int, slope: float) -> LinearRegression:
    x = np.arange(20 * n_features, dtype=float).reshape(20, n_features)
    return LinearRegression().fit(x, x.sum(axis=1) * slope)


def test_nothing_promoted_means_no_pointer(models: ModelStore) -> None:
    assert models.current() is None


def test_a_promoted_model_loads_and_predicts(models: ModelStore) -> None:
    pointer = models.save(ModelInfo("m", "v1", 2, ("a", "b")), fitted(2, 2.0))
    models.promote(pointer)
    assert models.current() == pointer
    loaded = models.load(pointer)
    assert loaded.version == "v1" and loaded.info.feature_names == ("a", "b")
    assert loaded.predict(np.array([[1.0, 2.0]])) == pytest.approx([6.0])


def test_a_corrupt_artifact_is_refused_and_the_previous_model_keeps_serving(models: ModelStore) -> None:
    # Given v1 served by a holder
    good = models.save(ModelInfo("m", "v1", 2, ("a", "b")), fitted(2, 1.0))
    models.promote(good)
    holder = PromotedModel(models, models.load)
    assert holder.refresh() and holder.get().version == "v1"
    # When v2's artifact is corrupted after upload and the pointer names it
    bad = models.save(ModelInfo("m", "v2", 2, ("a", "b")), fitted(2, 3.0))
    models.store.put_bytes(bad.bucket, bad.object_key, b"not a pickle")
    with pytest.raises(ModelArtifactInvalid):
        models.promote(bad)  # promotion itself refuses it
    models.store.put_bytes(models.settings.bucket_promotion, "current.json",
                           b'{"model_name": "m", "version": "v2", "bucket": "%s", "object_key": "%s"}'
                           % (bad.bucket.encode(), bad.object_key.encode()))
    # Then the holder refuses it and keeps v1
    assert not holder.refresh()
    assert holder.get().version == "v1"
    assert holder.refused == bad


def test_an_artifact_that_disagrees_with_its_metadata_is_refused(models: ModelStore) -> None:
    pointer = models.save(ModelInfo("m", "v3", 3, ("a", "b", "c")), fitted(2, 1.0))
    with pytest.raises(ModelArtifactInvalid):
        models.load(pointer)
