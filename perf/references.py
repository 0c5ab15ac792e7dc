"""The two simpler designs `compare` measures this project against (perf/README.md), with the project's bodies,
validation, model store and settings on waitress; `publish` trains, stores and promotes their model (50 boosted
trees: costlier per call than the demo's ridge, so that batching matters).

    python -m perf.references publish | inprocess | celery-api | celery-worker
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from celery import Celery
from flask import Flask, request
from sklearn.ensemble import GradientBoostingRegressor

from settings import Settings, load_settings
from tasks import demo_model
from tasks.errors import InvalidInput
from tasks.inference import LoadedModel, ModelInfo, validate_row
from tasks.model_store import ModelStore, Pointer, require_current
from tasks.storage import ObjectStore

MODEL_NAME = "demand-forecast-gbr"
ESTIMATORS = 50
MAX_DEPTH = 3
PREDICT_TASK = "perf.references.predict"

log = logging.getLogger("perf.references")


def version() -> str:
    recipe = {"data": demo_model.version(), "model": f"gbr(n_estimators={ESTIMATORS},max_depth={MAX_DEPTH})"}
    return "gbr-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def publish(settings: Settings) -> Pointer:
    """The demo's buckets and sample data, then the comparison model stored and promoted in its place."""
    demo_model.publish_demo(settings)
    features, target = demo_model.lag_features(demo_model.demand_series())
    estimator = GradientBoostingRegressor(n_estimators=ESTIMATORS, max_depth=MAX_DEPTH, random_state=demo_model.SEED)
    estimator.fit(features, target)
    models = ModelStore(settings, ObjectStore(settings))
    info = ModelInfo(MODEL_NAME, version(), len(demo_model.FEATURES), demo_model.FEATURES)
    pointer = models.save(info, estimator, {"rows": float(len(target))})
    models.promote(pointer)
    return pointer


def promoted(settings: Settings) -> LoadedModel:
    models = ModelStore(settings, ObjectStore(settings))
    return models.load(require_current(models))


def predict_time_us(model: LoadedModel, calls: int = 300, batch: int = 32) -> dict[str, float]:
    """Median in-process `predict` time: one row per call, and per row of a `batch`-row call."""
    rows = np.asarray(demo_model.lag_features(demo_model.demand_series())[0][:batch], dtype=np.float64)

    def median_us(block: np.ndarray, repeat: int) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            model.predict(block)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    return {"single_row_us": median_us(rows[:1], calls), f"per_row_of_{batch}_us": median_us(rows, calls // 10) / batch}


def create_app(info: ModelInfo, predict: Callable[[list[float]], float]) -> Flask:
    """/predict answered by `predict(row)`, in the project's request and answer bodies."""
    app = Flask("perf-reference")

    @app.post("/predict")
    def predict_view() -> Any:
        body = request.get_json(silent=True)
        features = body.get("features") if isinstance(body, dict) else None
        try:
            validate_row(features, info.n_features)
        except InvalidInput as error:
            return {"error": {"code": error.code, "message": error.message}}, error.status
        assert isinstance(features, list)
        return {"prediction": predict(features), "model_version": info.version, "cached": False}

    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.errorhandler(Exception)
    def failed(error: Exception) -> Any:
        # The project's error body, so the load client counts an error instead of a broken answer.
        return {"error": {"code": "internal_error", "message": type(error).__name__}}, 500

    return app


def celery_app(settings: Settings) -> Celery:
    """A minimal Celery app on the stack's Redis (broker and result backend), Celery's defaults otherwise."""
    app = Celery("perf-reference", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(worker_concurrency=settings.queue_workers, worker_hijack_root_logger=False)
    loaded: list[LoadedModel] = []  # once per pool process, on its first task

    @app.task(name=PREDICT_TASK)
    def predict(features: list[float]) -> float:
        if not loaded:
            loaded.append(promoted(settings))
        return loaded[0].predict(np.asarray([features], dtype=np.float64))[0]

    return app


def serve(app: Flask, settings: Settings) -> None:
    from waitress import serve as waitress_serve

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N" on every burst
    waitress_serve(app, host=settings.host, port=settings.port, threads=settings.http_threads,
                   channel_timeout=settings.http_keepalive, connection_limit=max(1000, settings.http_threads * 8),
                   asyncore_use_poll=True, ident="perf-reference")


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:] or ["?"])[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    if command == "publish":
        log.info("promoted %s", publish(settings).version)
    elif command == "inprocess":
        model = promoted(settings)
        serve(create_app(model.info, lambda row: model.predict(np.asarray([row], dtype=np.float64))[0]), settings)
    elif command == "celery-api":
        models = ModelStore(settings, ObjectStore(settings))
        info, _ = models.describe(require_current(models))
        task = celery_app(settings).tasks[PREDICT_TASK]
        timeout_s = settings.inference_timeout
        serve(create_app(info, lambda row: float(task.delay(row).get(timeout=timeout_s))), settings)
    elif command == "celery-worker":
        # Celery's own two lines per task, silenced as the project's worker silences them (tasks/logs.py): the
        # comparison is of the designs, not of how much they log.
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        celery_app(settings).worker_main(["worker", "--pool=prefork", "--loglevel=INFO", "--hostname=reference@%h"])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
