"""No secret in any log: the whole stack (API, worker, bridge, Flower) runs once with distinctive secrets,
serves the traffic that would tempt a process to log them (start-up configuration, a prediction, the admin
endpoint with the right and a wrong token, a Kafka claim, a refused Flower login), and then every process's
log is searched for each secret, raw, percent-encoded and, for Flower's credentials, base64-encoded.

The S3 stand-in (moto) accepts any access key and signs nothing, so the S3 keys here are only ever seen by
our processes; the dedicated Redis requires its password (`--requirepass`), so every process must have
taken it from REDIS_URL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from devtools.processes import CELERY, ManagedProcess, start_api, start_worker
from devtools.services import Service, free_port, start_redis, start_s3
from settings import Settings
from tasks.demo_model import SAMPLE_KEY, publish_demo
from tests.e2e.bridge_support import bridge_env, start_bridge, wait_until

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]
CLAIMS = 3


def _secret(name: str) -> str:
    # Distinctive, and with the characters that URLs and logs transform (`/`, `+`, `@`, `:`, `%`).
    return f"{name}-{uuid.uuid4().hex[:12]}/+@:%x"


@dataclass(frozen=True)
class Secrets:
    s3_access_key: str = f"S3AK{uuid.uuid4().hex[:16].upper()}"
    s3_secret_key: str = _secret("s3-secret")
    admin_token: str = f"admin-token-{uuid.uuid4().hex}"
    flower_user: str = "ops"
    flower_password: str = f"flower-pw-{uuid.uuid4().hex[:12]}"
    redis_password: str = _secret("redis-pw")

    def forms(self) -> dict[str, str]:
        """Every form in which a secret could show up in a log line, named for the failure message."""
        raw = {"S3_ACCESS_KEY": self.s3_access_key, "S3_SECRET_KEY": self.s3_secret_key,
               "ADMIN_TOKEN": self.admin_token, "Flower password": self.flower_password,
               "Redis password": self.redis_password}
        found: dict[str, str] = {}
        for name, value in raw.items():
            found[name] = value
            found[f"{name} (percent-encoded)"] = quote(value, safe="")
            found[f"{name} (form-encoded)"] = quote(value, safe="/")
        credentials = f"{self.flower_user}:{self.flower_password}".encode()
        found["Flower credentials (base64)"] = base64.b64encode(credentials).decode()
        return found


@dataclass
class Stack:
    secrets: Secrets
    processes: list[ManagedProcess]
    redis: Service
    api: ManagedProcess
    worker: ManagedProcess
    bridge: ManagedProcess
    flower_url: str


@pytest.fixture(scope="module")
def stack(module_env: dict[str, str], kafka_service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("secret-logs")
    secrets = Secrets()
    redis = start_redis(workdir=logs, password=secrets.redis_password)
    # An S3 server of its own that accepts only the distinctive keys (SeaweedFS checks signatures), holding the
    # demo model
    s3 = start_s3(workdir=logs / "s3", access_key=secrets.s3_access_key, secret_key=secrets.s3_secret_key)
    redis_url = f"redis://:{quote(secrets.redis_password, safe='')}@{redis.address}/0"
    publish_demo(Settings(redis_url=redis_url, s3_endpoint=s3.address, s3_access_key=secrets.s3_access_key,
                          s3_secret_key=secrets.s3_secret_key))
    env = bridge_env({
        **module_env,
        "REDIS_URL": redis_url,
        "S3_ENDPOINT": s3.address,
        "S3_ACCESS_KEY": secrets.s3_access_key,
        "S3_SECRET_KEY": secrets.s3_secret_key,
        "ADMIN_TOKEN": secrets.admin_token,
        "ENABLE_TEST_ENDPOINTS": "true",
        "FLOWER_BASIC_AUTH": f"{secrets.flower_user}:{secrets.flower_password}",
        "WORKER_METRICS_PORT": str(free_port()),
    }, kafka_service.address, maxsize=16)
    started: list[ManagedProcess] = []
    try:
        worker = start_worker(env, logs, "--without-mingle", "--without-gossip")
        started.append(worker)
        api = start_api(env, logs, free_port())
        started.append(api)
        bridge = start_bridge(env, logs)
        started.append(bridge)
        flower_port = free_port()
        flower = ManagedProcess("flower", [CELERY, "-A", "tasks", "flower", f"--port={flower_port}",
                                           "--address=127.0.0.1"], env, logs).start()
        started.append(flower)
        flower_url = f"http://127.0.0.1:{flower_port}"
        flower.wait_for(lambda: _status(f"{flower_url}/healthcheck") == 200, 60, "Flower answering")
        yield Stack(secrets, started, redis, api, worker, bridge, flower_url)
    finally:
        for process in reversed(started):
            process.stop()
        redis.stop()
        s3.stop()


def _status(url: str, **kwargs: object) -> int:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code  # type: ignore[arg-type]
    except requests.RequestException:
        return 0


def drive_traffic(stack: Stack) -> None:
    secrets = stack.secrets
    api = stack.api.url
    # A prediction, through Redis (password) to the worker and back.
    predicted = requests.post(f"{api}/predict", json={"features": ROW}, timeout=30)
    assert predicted.status_code == 200, predicted.text
    # The admin endpoint refused with a wrong token, and with the token's own prefix.
    claim = {"count": CLAIMS, "object_key": "samples/features.parquet"}
    for wrong in ("Bearer not-the-token", f"Bearer {secrets.admin_token[:-1]}"):
        refused = requests.post(f"{api}/publish_inference_claims", json=claim, headers={"Authorization": wrong}, timeout=30)
        assert refused.status_code == 401
    # Claims published with the right token, taken by the bridge and computed by the worker.
    claim["object_key"] = SAMPLE_KEY
    published = requests.post(f"{api}/publish_inference_claims", json=claim,
                              headers={"Authorization": f"Bearer {secrets.admin_token}"}, timeout=30)
    assert published.status_code == 202, published.text
    wait_until(lambda: len([e for e in stack.worker.events("predict_inference_end") if e.get("claim_id")]) >= CLAIMS,
               90, "the bridge's claims computed", [stack.bridge, stack.worker])
    wait_until(lambda: bool(stack.bridge.events("commit_offsets")), 30, "the claims' offsets committed", [stack.bridge])
    # Flower: a refused login, a wrong password, and the right one.
    flower = stack.flower_url
    assert _status(f"{flower}/") == 401
    assert _status(f"{flower}/api/workers", auth=(secrets.flower_user, "wrong")) == 401
    assert _status(f"{flower}/metrics", auth=(secrets.flower_user, secrets.flower_password[:-1])) == 401
    assert _status(f"{flower}/", auth=(secrets.flower_user, secrets.flower_password)) == 200


def test_no_process_logs_a_secret(stack: Stack) -> None:
    # Given the stack running with distinctive secrets, and traffic through every part of it
    drive_traffic(stack)
    # And each project process announced its effective configuration at start-up, secrets masked
    for process in (stack.api, stack.worker, stack.bridge):
        announced = process.events("config_loaded")
        assert announced, f"{process.name} logged no config_loaded"
        shown = announced[0]["settings"]
        assert shown["S3_SECRET_KEY"] == shown["S3_ACCESS_KEY"] == shown["ADMIN_TOKEN"] == "***"
        assert shown["REDIS_URL"].startswith("redis://***@")
    # When every process's log (and the dedicated Redis's) is read after the processes stopped
    for process in stack.processes:
        process.stop()
    logs: dict[str, str] = {process.name: process.output() for process in stack.processes}
    assert stack.redis.log_path is not None
    logs["redis"] = Path(stack.redis.log_path).read_text(errors="replace")
    assert all(logs.values()), [name for name, text in logs.items() if not text]
    # Then no secret appears in any form
    leaks = [f"{secret} in the {name} log" for name, text in logs.items()
             for secret, value in stack.secrets.forms().items() if value in text]
    assert leaks == []
