"""Model lifecycle end to end, on a model store of its own: no model yet (503, then picked up when it
appears), a promotion under load (zero failed requests), and a corrupt artifact (the old model stays)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import redis
import requests
from sklearn.linear_model import LinearRegression

from devtools.processes import PYTHON, ROOT, ManagedProcess, start_api, start_worker
from devtools.services import free_port
from settings import Settings
from tasks.demo_model import FEATURES, MODEL_NAME, publish_demo
from tasks.inference import ModelInfo
from tasks.model_store import POINTER_KEY, ModelStore
from tasks.serving import announce_promotion
from tasks.storage import ObjectStore

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]


@dataclass
class Stack:
    api: ManagedProcess
    worker: ManagedProcess
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def stack(module_env: dict[str, str], base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    buckets = {"BUCKET_MLFLOW": f"mlflow-{suffix}", "BUCKET_PROMOTION": f"promo-{suffix}"}
    env = {**module_env, **buckets}
    settings = base_settings.model_copy(update={"redis_url": env["REDIS_URL"], "bucket_mlflow": buckets["BUCKET_MLFLOW"],
                                                "bucket_promotion": buckets["BUCKET_PROMOTION"]})
    logs = tmp_path_factory.mktemp("lifecycle-logs")
    worker = start_worker(env, logs, "--without-mingle", "--without-gossip")
    api = start_api(env, logs, free_port(), ready=False)
    yield Stack(api, worker, settings, env)
    api.stop()
    worker.stop()


def predict(url: str) -> requests.Response:
    return requests.post(f"{url}/predict", json={"features": ROW}, timeout=10)


def wait(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout_s}s")


def test_no_model_is_503_until_one_is_promoted_then_it_is_served(stack: Stack) -> None:
    # Given an empty model store
    response = predict(stack.api.url)
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert response.headers["Retry-After"].isdigit()
    assert requests.get(f"{stack.api.url}/model", timeout=5).status_code == 503
    ready = requests.get(f"{stack.api.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["checks"]["model"] != "ok"
    # When the demo model is promoted
    pointer = publish_demo(stack.settings)
    assert pointer is not None
    # Then the API and the already running worker pick it up without a restart
    wait(lambda: requests.get(f"{stack.api.url}/readyz", timeout=5).status_code == 200, 20, "readiness")
    answer = predict(stack.api.url)
    assert answer.status_code == 200 and answer.json()["model_version"] == pointer.version
    assert any(e["version"] == pointer.version for e in stack.worker.events("model_loaded"))


def test_a_promotion_under_load_fails_no_request(stack: Stack) -> None:
    # Given a second version stored next to the demo model, and clients sending requests
    models = ModelStore(stack.settings, ObjectStore(stack.settings))
    x = np.random.default_rng(3).normal(size=(50, len(FEATURES)))
    models.save(ModelInfo(MODEL_NAME, "v2-test", len(FEATURES), FEATURES), LinearRegression().fit(x, x.sum(axis=1)))
    statuses: Counter[int] = Counter()
    versions: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            response = predict(stack.api.url)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                versions.append(response.json()["model_version"])

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait(lambda: len(versions) > 20, 20, "load before the promotion")
        # When the operator promotes v2
        result = subprocess.run([PYTHON, "-m", "tasks.promote", MODEL_NAME, "v2-test", "--no-kafka"], env=stack.env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        # Then responses move to v2
        wait(lambda: versions[-10:] == ["v2-test"] * 10, 20, "responses from v2")
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
    assert set(statuses) == {200}, statuses
    first_new = versions.index("v2-test")
    assert versions[0] != "v2-test" and all(v == "v2-test" for v in versions[first_new + 20:])
    assert requests.get(f"{stack.api.url}/model", timeout=5).json()["version"] == "v2-test"


def test_a_corrupt_artifact_leaves_the_old_model_serving(stack: Stack) -> None:
    models = ModelStore(stack.settings, ObjectStore(stack.settings))
    serving = predict(stack.api.url).json()["model_version"]
    x = np.random.default_rng(4).normal(size=(50, len(FEATURES)))
    bad = models.save(ModelInfo(MODEL_NAME, "v3-corrupt", len(FEATURES), FEATURES), LinearRegression().fit(x, x[:, 0]))
    models.store.put_bytes(bad.bucket, bad.object_key, b"\x80\x04 truncated pickle")
    # The pointer is written behind the promotion command's back, as a broken pipeline might.
    models.store.put_bytes(stack.settings.bucket_promotion, POINTER_KEY, json.dumps(bad.as_json()).encode())
    announce_promotion(redis.Redis.from_url(stack.settings.redis_url), bad)
    stack.worker.wait_for(lambda: any(e["version"] == "v3-corrupt" for e in stack.worker.events("model_refused")), 60,
                          "model_refused in the worker")
    responses = [predict(stack.api.url) for _ in range(10)]
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["model_version"] for r in responses} == {serving}
    stack.api.wait_for(lambda: any(e["version"] == "v3-corrupt" for e in stack.api.events("model_refused")), 60,
                       "model_refused in the API")
    assert requests.get(f"{stack.api.url}/model", timeout=5).json()["version"] == serving
