"""Locust scenarios against a running API (`locust -f perf/locustfile.py --host http://127.0.0.1:8000`).

Name the profile on the command line (Locust otherwise mixes the classes). The original profile
(`OriginalUser`): 80 % POST /predict, 10 % GET /healthz, 10 % GET
/download_processed/demo/features.parquet; run it as the original validation did with
`locust -f perf/locustfile.py OriginalUser --headless -u 200 -r 50 -t 60s --host ...`.
`FlaskEchoUser` paces like `OriginalUser` against the one-route Flask echo of perf/echo.py, for reference.
`PredictOnlyUser` is the isolated-predict profile (`-u 200` or `-u 400` for 2–3 minutes).
`OverloadUser` sends POST /predict at `--perf-user-rate` requests per second per user (Locust's
constant-throughput pacing), each with `X-Request-Timeout-Ms: --perf-timeout-ms` (whether a 200 came
within it is for the reader of the responses to judge: Locust counts it a success).

Every task checks the response body, not only the status: a 200 must carry a finite prediction and a
model version; 429 and 503 must carry the JSON error body and an integer Retry-After (load shedding
working: counted as successes under the request's name); anything else fails. A failure's message
starts with `invalid body` when the answer breaks the contract for its status, and with `status N`
when the status itself is not one the profile accepts (e.g. a well-formed 504).

`--perf-responses PATH` writes every response to PATH-<pid>.csv (`start_s` epoch seconds,
`latency_ms`, `status` (0: transport error), `valid` (the answer matches the contract for its status,
as in perf/loadgen.py), `detail` (Locust's failure message, or the error code), `name`):
`python -m perf --scenario original|isolated|overload` reads them for per-second percentiles and
status codes, which Locust's own CSVs do not have.

For the repository's own measurements prefer `make perf` (perf/loadgen.py costs a fraction of Locust's
CPU per request, which matters on a small machine); this file is also for users who already run Locust.
"""

from __future__ import annotations

import csv
import math
import os
import random
from typing import Any

from locust import FastHttpUser, between, constant_throughput, events, task

N_FEATURES = 9
DOWNLOAD_KEY = "demo/features.parquet"
ROWS = [[random.Random(seed).uniform(40, 60) for _ in range(N_FEATURES - 2)] + [0.5, 0.86] for seed in range(512)]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--perf-responses", default="", include_in_web_ui=False,
                        help="write every response to PATH-<pid>.csv")
    parser.add_argument("--perf-user-rate", type=float, default=1.0, include_in_web_ui=False,
                        help="OverloadUser: requests per second per user")
    parser.add_argument("--perf-timeout-ms", type=int, default=1000, include_in_web_ui=False,
                        help="OverloadUser: X-Request-Timeout-Ms of every request")


class _Recorder:
    """One CSV of every response per Locust process, opened on the first response (after any fork)."""

    def __init__(self) -> None:
        self.prefix = ""
        self.handle: Any = None
        self.writer: Any = None

    def record(self, name: str, start_time: float, response_time: float, response: Any, exception: Any,
               context: dict[str, Any]) -> None:
        if not self.prefix:
            return
        if self.writer is None:
            self.handle = open(f"{self.prefix}-{os.getpid()}.csv", "w", newline="")  # noqa: SIM115 - closed on quit
            self.writer = csv.writer(self.handle)
            self.writer.writerow(["start_s", "latency_ms", "status", "valid", "detail", "name"])
        status = getattr(response, "status_code", 0) or 0
        detail = str(exception)[:200] if exception is not None else context.get("detail", "")
        valid = status != 0 and not detail.startswith("invalid body")
        self.writer.writerow([f"{start_time:.6f}", f"{response_time:.3f}", status, int(valid), detail, name])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = self.writer = None


_recorder = _Recorder()


@events.init.add_listener
def _open_recorder(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        _recorder.prefix = environment.parsed_options.perf_responses


@events.request.add_listener
def _record(name: str, start_time: float, response_time: float, response: Any = None, exception: Any = None,
            context: dict[str, Any] | None = None, **_: Any) -> None:
    _recorder.record(name, start_time, response_time, response, exception, context or {})


@events.quitting.add_listener
def _close_recorder(**_: Any) -> None:
    _recorder.close()


def _json(response) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The body as a JSON object, or {}: a check must not raise, or Locust drops the request from its figures."""
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - any undecodable body is simply not the JSON we wanted
        return {}
    return body if isinstance(body, dict) else {}


def _check_predict(response) -> None:  # type: ignore[no-untyped-def]
    context = response.request_meta["context"]
    body = _json(response)
    if not response.status_code:
        response.failure(f"transport error: {getattr(response, 'error', None)!r}"[:200])
        return
    if response.status_code == 200:
        prediction = body.get("prediction")
        if not (isinstance(prediction, float) and math.isfinite(prediction) and isinstance(body.get("model_version"), str)):
            response.failure(f"invalid body: 200 without a valid prediction: {str(response.text)[:200]}")
        else:
            context["detail"] = "cached" if body.get("cached") is True else ""
        return
    _check_error(response, body)


def _check_error(response, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Any answer but a 200: a 429 or 503 with the contract's error body and an integer Retry-After is
    load shedding (a success); anything else fails."""
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    if not error.get("code"):
        response.failure(f"invalid body: {response.status_code} without the JSON error body")
    elif response.status_code in (429, 503):
        if not response.headers.get("Retry-After", "").isdigit():
            response.failure(f"invalid body: {response.status_code} without an integer Retry-After")
        else:
            response.request_meta["context"]["detail"] = f"{error['code']} retry_after={response.headers['Retry-After']}"
            response.success()  # shedding, counted under its request name below
    else:
        response.failure(f"status {response.status_code} {error['code']}")


class PredictOnlyUser(FastHttpUser):
    wait_time = between(0, 0)

    @task
    def predict(self) -> None:
        with self.client.post("/predict", json={"features": random.choice(ROWS)}, catch_response=True,
                              name="/predict") as response:
            _check_predict(response)


class OverloadUser(FastHttpUser):
    """Open-ended offered load from closed-loop users: each user starts a request every 1 / rate seconds,
    or at once when the previous answer took longer than that (then the offered rate falls)."""

    def wait_time(self) -> float:
        return float(constant_throughput(self.environment.parsed_options.perf_user_rate)(self))

    @task
    def predict(self) -> None:
        timeout_ms = str(self.environment.parsed_options.perf_timeout_ms)
        with self.client.post("/predict", json={"features": random.choice(ROWS)}, catch_response=True,
                              name="/predict", headers={"X-Request-Timeout-Ms": timeout_ms}) as response:
            _check_predict(response)


class FlaskEchoUser(FastHttpUser):
    """The original profile's pacing (0-100 ms between requests) against the one-route Flask echo
    (`python -m perf.echo --serve --flask`): what the profile gets from a Flask app doing no work at all,
    on the same machine. POST /echo with a /predict body; the answer must be that body."""

    wait_time = between(0.0, 0.1)

    @task
    def echo(self) -> None:
        body = {"features": random.choice(ROWS)}
        with self.client.post("/echo", json=body, catch_response=True, name="/echo") as response:
            if not response.status_code:
                response.failure(f"transport error: {getattr(response, 'error', None)!r}"[:200])
            elif response.status_code != 200 or _json(response) != body:
                response.failure(f"invalid body: status {response.status_code}, not the body sent")


class OriginalUser(FastHttpUser):
    wait_time = between(0.0, 0.1)

    @task(8)
    def predict(self) -> None:
        with self.client.post("/predict", json={"features": random.choice(ROWS)}, catch_response=True,
                              name="/predict") as response:
            _check_predict(response)

    @task(1)
    def healthz(self) -> None:
        with self.client.get("/healthz", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code} from /healthz")
            elif _json(response) != {"status": "ok"}:
                response.failure("invalid body: /healthz without {\"status\": \"ok\"}")

    @task(1)
    def download(self) -> None:
        with self.client.get(f"/download_processed/{DOWNLOAD_KEY}", catch_response=True,
                             name="/download_processed") as response:
            if not response.status_code:
                response.failure(f"transport error: {getattr(response, 'error', None)!r}"[:200])
            elif response.status_code != 200:
                _check_error(response, _json(response))
            elif not (response.content or b"").startswith(b"PAR1"):
                response.failure("invalid body: download without a Parquet body")
