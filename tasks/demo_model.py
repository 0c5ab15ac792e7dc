"""`python -m tasks.demo_model [--if-empty]`: train, store and promote the demo forecasting model.

A ridge regression over lag features of a generated hourly demand series (daily and weekly seasons,
trend, noise), from a fixed seed: the same code and seed give the same version, so running it again
changes nothing. With `--if-empty` it does nothing when a model is already promoted. It also stores a
sample of feature rows as Parquet in BUCKET_PROCESSED (`demo/features.parquet`) for claims and downloads.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from settings import Settings, load_settings
from tasks.inference import ModelInfo
from tasks.logs import configure_logging, log_event
from tasks.model_store import ModelStore, Pointer
from tasks.startup import require_services
from tasks.storage import ObjectStore

MODEL_NAME = "demand-forecast"
SEED = 42
HOURS = 24 * 7 * 12
LAGS = (1, 2, 3, 6, 12, 24, 168)
FEATURES = (*(f"lag_{lag}" for lag in LAGS), "hour_sin", "hour_cos")
SAMPLE_KEY = "demo/features.parquet"
SAMPLE_ROWS = 256

log = logging.getLogger("tasks.demo_model")


def demand_series(hours: int = HOURS, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    daily = 8 * np.sin(2 * np.pi * t / 24)
    weekly = 4 * np.sin(2 * np.pi * t / 168)
    return 50 + 0.01 * t + daily + weekly + rng.normal(0, 1.5, hours)


def lag_features(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = max(LAGS)
    t = np.arange(start, len(series))
    columns = [series[t - lag] for lag in LAGS]
    columns += [np.sin(2 * np.pi * (t % 24) / 24), np.cos(2 * np.pi * (t % 24) / 24)]
    return np.column_stack(columns), series[t]


def version() -> str:
    recipe = {"seed": SEED, "hours": HOURS, "features": FEATURES, "model": "standard-scaler+ridge(alpha=1.0)"}
    return "demo-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def train() -> tuple[object, dict[str, float]]:
    features, target = lag_features(demand_series())
    split = int(len(target) * 0.8)
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    model.fit(features[:split], target[:split])
    mae = mean_absolute_error(target[split:], model.predict(features[split:]))
    return model, {"mae_holdout": round(float(mae), 4), "rows": float(len(target))}


def sample_parquet(rows: int = SAMPLE_ROWS) -> bytes:
    features, _ = lag_features(demand_series())
    table = pa.table({name: features[-rows:, i] for i, name in enumerate(FEATURES)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def publish_demo(settings: Settings, *, if_empty: bool = False) -> Pointer | None:
    store = ObjectStore(settings)
    models = ModelStore(settings, store)
    models.ensure_buckets()
    for bucket in (settings.bucket_processed, settings.bucket_logs):
        store.ensure_bucket(bucket)
    if not store.exists(settings.bucket_processed, SAMPLE_KEY):
        store.put_bytes(settings.bucket_processed, SAMPLE_KEY, sample_parquet())
    current = models.current()
    if if_empty and current is not None:
        log_event(log, "demo_model_skipped", reason="a model is already promoted", version=current.version)
        return None
    pointer = models.stored(MODEL_NAME, version())
    if pointer is None:
        estimator, metrics = train()
        pointer = models.save(ModelInfo(MODEL_NAME, version(), len(FEATURES), FEATURES), estimator, metrics)
    if current != pointer:
        models.promote(pointer)
    log_event(log, "demo_model_promoted", model_name=MODEL_NAME, version=pointer.version)
    return pointer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-empty", action="store_true", help="do nothing when a model is already promoted")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging("worker", settings)
    require_services(settings, redis_needed=False)
    publish_demo(settings, if_empty=args.if_empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
