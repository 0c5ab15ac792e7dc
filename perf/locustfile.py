"""Locust profiles against a running API: `locust -f perf/locustfile.py <UserClass> --host http://127.0.0.1:8000`
(name the class: Locust otherwise mixes them). The profiles, and why a 429 or 503 with the contract's body counts as
a success: perf/README.md. `--perf-responses PATH` writes every response to PATH-<pid>.csv for perf/."""

from __future__ import annotations

import csv
import json
import os
import random
from typing import Any

from locust import FastHttpUser, between, constant_throughput, events, task

from perf.checks import ACCEPTED, check

N_FEATURES = 9
ROWS = [[random.Random(seed).uniform(40, 60) for _ in range(N_FEATURES - 2)] + [0.5, 0.86] for seed in range(512)]
JSON = {"Content-Type": "application/json"}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--perf-responses", default="", include_in_web_ui=False, help="write every response to PATH-<pid>.csv")
    parser.add_argument("--perf-user-rate", type=float, default=1.0, include_in_web_ui=False,
                        help="OverloadUser: requests per second per user")
    parser.add_argument("--perf-timeout-ms", type=int, default=1000, include_in_web_ui=False,
                        help="OverloadUser: X-Request-Timeout-Ms of every request")


class _Recorder:
    """One CSV of every response per Locust process, opened on the first response (after any fork)."""

    prefix = ""
    handle: Any = None
    writer: Any = None

    def record(self, name: str, start_time: float, response_time: float, response: Any, exception: Any,
               context: dict[str, Any] | None = None, **_: Any) -> None:
        if not self.prefix:
            return
        if self.writer is None:
            self.handle = open(f"{self.prefix}-{os.getpid()}.csv", "w", newline="")  # noqa: SIM115 - closed on quit
            self.writer = csv.writer(self.handle)
            self.writer.writerow(["start_s", "latency_ms", "status", "valid", "detail", "name"])
        status = getattr(response, "status_code", 0) or 0
        detail = str(exception)[:200] if exception is not None else (context or {}).get("detail", "")
        valid = status != 0 and not detail.startswith("invalid body")
        self.writer.writerow([f"{start_time:.6f}", f"{response_time:.3f}", status, int(valid), detail, name])

    def close(self, **_: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = self.writer = None


_recorder = _Recorder()
events.request.add_listener(_recorder.record)
events.quitting.add_listener(_recorder.close)


@events.init.add_listener
def _open_recorder(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        _recorder.prefix = environment.parsed_options.perf_responses


def _judge(response: Any, kind: str, sent: bytes = b"") -> None:
    """Success or failure of a `catch_response` answer, by perf/checks.py."""
    if not response.status_code:
        response.failure(f"transport error: {getattr(response, 'error', None)!r}"[:200])
        return
    valid, detail = check(kind, response.status_code, response.content or b"", response.headers.get("Retry-After", ""), sent)
    if not valid:
        response.failure(f"invalid body: {detail}: {str(response.text)[:120]}")
    elif response.status_code not in ACCEPTED:
        response.failure(f"status {response.status_code} {detail}")
    else:
        response.request_meta["context"]["detail"] = detail
        response.success()


class _PredictUser(FastHttpUser):
    abstract = True

    def post_predict(self, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"features": random.choice(ROWS)})
        with self.client.post("/predict", data=body, headers={**JSON, **(headers or {})}, catch_response=True,
                              name="/predict") as response:
            _judge(response, "predict")


class PredictOnlyUser(_PredictUser):
    wait_time = between(0, 0)

    @task
    def predict(self) -> None:
        self.post_predict()


class OverloadUser(_PredictUser):
    """Each user starts a request every 1 / rate seconds, or at once when the previous answer took longer."""

    def wait_time(self) -> float:
        return float(constant_throughput(self.environment.parsed_options.perf_user_rate)(self))

    @task
    def predict(self) -> None:
        self.post_predict({"X-Request-Timeout-Ms": str(self.environment.parsed_options.perf_timeout_ms)})


class FlaskEchoUser(FastHttpUser):
    wait_time = between(0.0, 0.1)

    @task
    def echo(self) -> None:
        body = json.dumps({"features": random.choice(ROWS)})
        with self.client.post("/echo", data=body, headers=JSON, catch_response=True, name="/echo") as response:
            _judge(response, "echo", body.encode())


class OriginalUser(_PredictUser):
    wait_time = between(0.0, 0.1)

    @task(8)
    def predict(self) -> None:
        self.post_predict()

    @task(1)
    def healthz(self) -> None:
        with self.client.get("/healthz", catch_response=True) as response:
            _judge(response, "healthz")

    @task(1)
    def download(self) -> None:
        with self.client.get("/download_processed/demo/features.parquet", catch_response=True,
                             name="/download_processed") as response:
            _judge(response, "download")
