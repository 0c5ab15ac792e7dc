"""Locust scenarios against a running API (`locust -f perf/locustfile.py --host http://127.0.0.1:8000`).

Name the profile on the command line (Locust otherwise mixes both classes). The original profile
(`OriginalUser`): 80 % POST /predict, 10 % GET /healthz, 10 % GET
/download_processed/demo/features.parquet; run it as the original validation did with
`locust -f perf/locustfile.py OriginalUser --headless -u 200 -r 50 -t 60s --host ...`.
`PredictOnlyUser` is the isolated-predict profile (`-u 200` or `-u 400` for 2–3 minutes).

Every task checks the response body, not only the status: a 200 must carry a finite prediction and a
model version; 429 and 503 must carry the JSON error body and an integer Retry-After (load shedding
working: counted as successes under the request's name); anything else fails.

For the repository's own measurements prefer `make perf` (perf/loadgen.py costs a fraction of Locust's
CPU per request, which matters on a small machine); this file is for users who already run Locust.
"""

from __future__ import annotations

import math
import random

from locust import FastHttpUser, between, task

N_FEATURES = 9
DOWNLOAD_KEY = "demo/features.parquet"
ROWS = [[random.Random(seed).uniform(40, 60) for _ in range(N_FEATURES - 2)] + [0.5, 0.86] for seed in range(512)]


def _check_predict(response) -> None:  # type: ignore[no-untyped-def]
    if response.status_code == 200:
        body = response.json()
        prediction = body.get("prediction")
        if not (isinstance(prediction, float) and math.isfinite(prediction) and isinstance(body.get("model_version"), str)):
            response.failure(f"200 without a valid prediction: {response.text[:200]}")
        return
    if response.status_code in (429, 503):
        error = (response.json() or {}).get("error", {})
        if not error.get("code") or not response.headers.get("Retry-After", "").isdigit():
            response.failure(f"{response.status_code} without the error body or an integer Retry-After")
        else:
            response.success()  # shedding, counted under its request name below
        return
    response.failure(f"unexpected status {response.status_code}: {response.text[:200]}")


class PredictOnlyUser(FastHttpUser):
    wait_time = between(0, 0)

    @task
    def predict(self) -> None:
        with self.client.post("/predict", json={"features": random.choice(ROWS)}, catch_response=True,
                              name="/predict") as response:
            _check_predict(response)


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
            if response.status_code != 200 or response.json() != {"status": "ok"}:
                response.failure(f"/healthz answered {response.status_code}")

    @task(1)
    def download(self) -> None:
        with self.client.get(f"/download_processed/{DOWNLOAD_KEY}", catch_response=True,
                             name="/download_processed") as response:
            if response.status_code != 200 or not response.content.startswith(b"PAR1"):
                response.failure(f"download answered {response.status_code} without a Parquet body")
