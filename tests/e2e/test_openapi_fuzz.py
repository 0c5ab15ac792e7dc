"""schemathesis against the served /openapi.json, on a real stack: `python -m webapp`, a Celery worker,
Redis, S3 (with the demo model and its sample object) and a Kafka-protocol broker.

Every operation, positive and negative data, with the checks: no server error, status codes, content types,
response bodies and headers as documented, valid data accepted and invalid data refused, 405 with `Allow`
for undocumented methods. The admin endpoint is guarded by ADMIN_TOKEN: one run sends the token (and the
`ignored_auth` check retries without it and with a wrong one), the other sends none or a generated one.

Where the contract answers a schema-valid request with something the checks' defaults do not expect, their
lists are widened for that answer only, and a check of ours makes sure each such answer was earned:
- 504 `deadline_exceeded` (not a server error here) when the request's own deadline header left no time
  (`deadline_504s_are_earned`);
- 422 `non_finite_prediction` for valid rows whose prediction overflows (`unscorable_422s_are_earned`);
- 416 for a Range the object cannot satisfy: several ranges, or one past its end (`range_416s_are_earned`);
- 503 from /readyz, which is how readiness says "not ready" (its body must still match the schema);
- 413 counts as a refusal of invalid data (more than MAX_INSTANCES instances).
Examples per operation: `scaled(short, long)`."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.config import SchemathesisConfig

from devtools.processes import ManagedProcess
from devtools.services import Service
from tests.e2e.serving import api_with_worker
from tests.fuzzing import scaled

pytestmark = pytest.mark.fuzz

TOKEN = "fuzz-admin-token"
# A 504 is the contract's answer when the caller's own deadline was this close when it was sent; a request
# without a deadline header has DEFAULT_TTL_MS (15 s), and a 504 for it would be a real failure.
SHORT_DEADLINE_MS = 5_000
UNSCORABLE_ABOVE = 1e100


@dataclass
class Tally:
    cases: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "METHOD path status", as sent


TALLY = Tally()


@pytest.fixture(scope="module")
def stack(module_env: dict[str, str], kafka_service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    logs = tmp_path_factory.mktemp("openapi-fuzz")
    env = {**module_env, "ENABLE_TEST_ENDPOINTS": "1", "ADMIN_TOKEN": TOKEN,
           "KAFKA_BOOTSTRAP_SERVERS": kafka_service.address, "KAFKA_TOPIC_CLAIMS": f"fuzz-claims-{uuid.uuid4().hex[:8]}"}
    with api_with_worker(env, logs) as api:
        started, answered = time.monotonic(), _answered_by_the_app(api.url)
        yield api
        answered = _answered_by_the_app(api.url) - answered - 1  # less the scrape that counted them
        published = sum(event["count"] for event in api.events("publish_claims_ok"))
        print(f"\nschemathesis: {TALLY.cases} cases in {time.monotonic() - started:.1f} s; {TALLY.requests} requests sent "
              f"through the test's session, {answered} answered by the app (probes included, /healthz not); "
              f"{published} claims published")
        print("\n".join(f"  {count:6d}  {what}" for what, count in sorted(TALLY.statuses.items())))


def _answered_by_the_app(url: str) -> int:
    """Requests the app has answered (its latency histogram's count: all but /healthz and the server's refusals)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "inference_http_request_duration_seconds"
                   for sample in family.samples if sample.name.endswith("_count")))


def _count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    TALLY.requests += 1
    path = urlsplit(response.request.url or "").path
    if path.startswith("/download_processed/"):
        path = "/download_processed/{object_key}"
    TALLY.statuses[f"{response.request.method} {path} {response.status_code}"] += 1


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """Every case's request goes through this session and is counted by status. schemathesis's own probes
    (`ignored_auth` without and with a wrong token, content-type controls) leave the session out: the app's
    count covers them."""
    with requests.Session() as counted:
        counted.hooks["response"].append(_count)
        yield counted


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]},
                   # Refusals: the defaults, plus 413 (too many instances, a body over MAX_BODY_BYTES).
                   "negative_data_rejection": {"expected-statuses": [
                       "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]}},
        "operations": [
            {"include-name": "GET /readyz",
             "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}},
            # The defaults, plus 422: schema-valid rows whose prediction is not a finite number (see
            # `unscorable_422s_are_earned`).
            {"include-name": "POST /predict",
             "checks": {"positive_data_acceptance": {"expected-statuses": [
                 "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]}}},
            # The defaults, plus 416: a Range the object cannot satisfy (see `range_416s_are_earned`).
            {"include-name": "GET /download_processed/{object_key}",
             "checks": {"positive_data_acceptance": {"expected-statuses": [
                 "2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx"]}}},
        ],
        "request-timeout": 30,
    })


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy loader reads `item._nodeid`, which pytest 9 no longer has (it keeps `_id`):
    give the item one, so that `from_fixture` runs. Its per-operation rename of the id then has no effect."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def api_schema(stack: ManagedProcess) -> Any:
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json", config=_config(), timeout=10)


@schemathesis.check
def deadline_504s_are_earned(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 504 must be `deadline_exceeded` for a request whose own deadline header was short when it was sent."""
    if response.status_code != 504:
        return None
    sent_ms = time.time() * 1000 - response.elapsed * 1000
    sent = response.request.headers
    deadlines = []
    if "X-Request-Timeout-Ms" in sent:
        deadlines.append(sent_ms + int(sent["X-Request-Timeout-Ms"]))
    if "X-Request-Deadline-Ms" in sent:
        deadlines.append(int(sent["X-Request-Deadline-Ms"]))
    code = response.json()["error"]["code"]
    assert code == "deadline_exceeded", f"504 with code {code}"
    assert deadlines and min(deadlines) - sent_ms <= SHORT_DEADLINE_MS, \
        f"504 for a request whose deadline was {min(deadlines) - sent_ms if deadlines else 'the default'} ms away"
    return None


@schemathesis.check
def unscorable_422s_are_earned(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 422 must be `non_finite_prediction`, for a body holding a feature so large that the demo model's
    output can overflow (it scales and weighs each feature by factors within a few orders of magnitude of 1,
    so nothing under UNSCORABLE_ABOVE comes near a double's 1.8e308)."""
    if response.status_code != 422:
        return None
    assert response.json()["error"]["code"] == "non_finite_prediction", response.text
    body = case.body if isinstance(case.body, dict) else {}
    rows = [body["features"]] if "features" in body else body.get("instances", [])
    largest = max((abs(value) for row in rows for value in row), default=0.0)
    assert largest > UNSCORABLE_ABOVE, f"422 for features at most {largest} in magnitude"
    return None


@schemathesis.check
def range_416s_are_earned(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 416 must answer several ranges, or one that starts at or past the object's end (its size is in the
    answer's `Content-Range: bytes */<size>`), or an empty suffix."""
    if response.status_code != 416:
        return None
    headers = {name.lower(): value for name, value in response.headers.items()}
    content_range = headers["content-range"]
    size = int((content_range[0] if isinstance(content_range, list) else content_range).rsplit("/", 1)[1])
    ranges = response.request.headers.get("Range", "").removeprefix("bytes=").split(",")
    if len(ranges) > 1:
        return None
    first, _, last = ranges[0].strip().partition("-")
    assert (first.isdigit() and int(first) >= size) or (not first and last.isdigit() and int(last) == 0), \
        f"416 for {response.request.headers.get('Range')!r} on an object of {size} bytes"
    return None


C = schemathesis.checks
CHECKS = [C.not_a_server_error, C.status_code_conformance, C.content_type_conformance, C.response_schema_conformance,
          C.response_headers_conformance, C.positive_data_acceptance, C.negative_data_rejection, C.unsupported_method,
          C.allow_header_conformance, deadline_504s_are_earned, unscorable_422s_are_earned, range_416s_are_earned]

schema = schemathesis.pytest.from_fixture("api_schema")
EXAMPLES = scaled(50, 1_000)


@schema.parametrize()
@settings(max_examples=EXAMPLES)
def test_every_operation_conforms_with_the_admin_token(case: Any, session: requests.Session) -> None:
    TALLY.cases += 1
    case.call_and_validate(session=session, headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[*CHECKS, C.ignored_auth])


@schema.include(path="/publish_inference_claims").parametrize()
@settings(max_examples=EXAMPLES)
def test_the_admin_endpoint_without_the_token(case: Any, session: requests.Session) -> None:
    TALLY.cases += 1
    response = case.call_and_validate(session=session, checks=CHECKS)
    if response.request.method == "POST":  # not one of the other methods `unsupported_method` tries
        assert response.status_code == 401, response.text
