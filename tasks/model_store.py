"""The model store in object storage: versioned artifacts, and a pointer naming the promoted one.

    BUCKET_MLFLOW:    models/<model_name>/<version>/model.joblib   the fitted estimator
                      models/<model_name>/<version>/meta.json      ModelInfo, sha256 of the artifact, metrics
    BUCKET_PROMOTION: current.json                                 {"model_name", "version", "bucket", "object_key"}

Artifacts are verified on load (checksum against meta.json, feature count against the estimator), so a
corrupt or incompatible artifact is refused instead of served. Artifacts are pickles: only load them
from a bucket you control.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import joblib

from settings import Settings
from tasks.errors import ModelArtifactInvalid, ModelUnavailable, ObjectMissing
from tasks.inference import LoadedModel, ModelInfo
from tasks.storage import ObjectStore

POINTER_KEY = "current.json"


@dataclass(frozen=True)
class Pointer:
    model_name: str
    version: str
    bucket: str
    object_key: str

    @property
    def meta_key(self) -> str:
        return self.object_key.rsplit("/", 1)[0] + "/meta.json"

    def as_json(self) -> dict[str, str]:
        return {"model_name": self.model_name, "version": self.version, "bucket": self.bucket, "object_key": self.object_key}

    @classmethod
    def parse(cls, data: Any) -> Pointer:
        try:
            return cls(**{field: str(data[field]) for field in ("model_name", "version", "bucket", "object_key")})
        except (KeyError, TypeError) as error:
            raise ModelArtifactInvalid(f"model pointer lacks a field: {error}") from None


class ModelStore:
    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    def ensure_buckets(self) -> None:
        for bucket in (self.settings.bucket_mlflow, self.settings.bucket_promotion):
            self.store.ensure_bucket(bucket)

    def current(self) -> Pointer | None:
        """The promoted model's pointer, or None when nothing was ever promoted."""
        try:
            raw = self.store.get_bytes(self.settings.bucket_promotion, POINTER_KEY)
        except ObjectMissing:
            return None
        try:
            return Pointer.parse(json.loads(raw))
        except ValueError:
            raise ModelArtifactInvalid("model pointer is not JSON") from None

    def describe(self, pointer: Pointer) -> tuple[ModelInfo, dict[str, Any]]:
        try:
            meta = json.loads(self.store.get_bytes(pointer.bucket, pointer.meta_key))
            info = ModelInfo(
                model_name=str(meta["model_name"]),
                version=str(meta["version"]),
                n_features=int(meta["n_features"]),
                feature_names=tuple(str(name) for name in meta["feature_names"]),
            )
        except ObjectMissing:
            raise ModelArtifactInvalid(f"model {pointer.version} has no meta.json") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ModelArtifactInvalid(f"model {pointer.version} has an unreadable meta.json: {error}") from None
        return info, meta

    def load(self, pointer: Pointer) -> LoadedModel:
        info, meta = self.describe(pointer)
        try:
            blob = self.store.get_bytes(pointer.bucket, pointer.object_key)
        except ObjectMissing:
            raise ModelArtifactInvalid(f"model {pointer.version} has no artifact") from None
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise ModelArtifactInvalid(f"model {pointer.version}: artifact checksum does not match meta.json")
        try:
            estimator = joblib.load(io.BytesIO(blob))
        except Exception as error:  # noqa: BLE001 - any unpickling failure means the same: refuse it
            raise ModelArtifactInvalid(f"model {pointer.version} does not load: {type(error).__name__}") from None
        if getattr(estimator, "n_features_in_", info.n_features) != info.n_features:
            raise ModelArtifactInvalid(f"model {pointer.version}: estimator and meta.json disagree on features")
        return LoadedModel(info, estimator)

    def save(self, info: ModelInfo, estimator: Any, metrics: dict[str, float] | None = None) -> Pointer:
        """Store a fitted estimator as a new version (not promoted)."""
        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        blob = buffer.getvalue()
        prefix = f"models/{info.model_name}/{info.version}"
        meta = {**info.public(), "sha256": hashlib.sha256(blob).hexdigest(), "metrics": metrics or {},
                "created_at_ms": int(time.time() * 1000)}
        bucket = self.settings.bucket_mlflow
        self.store.put_bytes(bucket, f"{prefix}/model.joblib", blob)
        self.store.put_bytes(bucket, f"{prefix}/meta.json", json.dumps(meta).encode(), "application/json")
        return Pointer(info.model_name, info.version, bucket, f"{prefix}/model.joblib")

    def stored(self, model_name: str, version: str) -> Pointer | None:
        bucket = self.settings.bucket_mlflow
        key = f"models/{model_name}/{version}/model.joblib"
        return Pointer(model_name, version, bucket, key) if self.store.exists(bucket, key) else None

    def promote(self, pointer: Pointer) -> None:
        """Make `pointer` the served version (after checking that it loads)."""
        self.load(pointer)
        body = json.dumps({**pointer.as_json(), "promoted_at_ms": int(time.time() * 1000)}).encode()
        self.store.put_bytes(self.settings.bucket_promotion, POINTER_KEY, body, "application/json")


def require_current(models: ModelStore) -> Pointer:
    pointer = models.current()
    if pointer is None:
        raise ModelUnavailable("no model has been promoted yet")
    return pointer
