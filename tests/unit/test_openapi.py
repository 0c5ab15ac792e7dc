"""/openapi.json is the contract: a valid OpenAPI 3.1 document listing exactly the routes the app serves,
with the limits and headers the API applies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from settings import Settings
from webapp import create_app
from webapp.openapi import openapi_document
from webapp.publish import MAX_COUNT

# Flask answers these for every route; the document leaves them implicit.
IMPLICIT = {"HEAD", "OPTIONS"}


def document(**overrides: Any) -> dict[str, Any]:
    return openapi_document(**{"n_features": 9, "max_instances": 1024, "max_body_bytes": 1 << 20, "bearer": True, **overrides})


@pytest.mark.parametrize("n_features, bearer", [(9, True), (9, False), (None, True), (None, False)])
def test_the_document_is_valid_openapi(n_features: int | None, bearer: bool) -> None:
    validate(document(n_features=n_features, bearer=bearer))


def test_every_route_the_app_serves_is_documented_and_nothing_else() -> None:
    # Given the app (no service is contacted: nothing is started)
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", s3_endpoint="127.0.0.1:1"), start=False)
    # When its routes are read as OpenAPI paths and methods
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() for method in (rule.methods or set()) - IMPLICIT}
    # Then they are exactly the document's operations
    documented = {(path, method) for path, item in document()["paths"].items() for method in item}
    assert served == documented


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, operation) for path, item in document()["paths"].items() for method, operation in item.items()]


@pytest.mark.parametrize("path, method, operation", operations(), ids=[f"{m.upper()} {p}" for p, m, _ in operations()])
def test_every_error_has_the_error_body_and_every_retry_its_header(path: str, method: str, operation: dict[str, Any]) -> None:
    components = document()["components"]
    assert "405" in operation["responses"]
    for status, response in operation["responses"].items():
        if "$ref" in response:
            response = components["responses"][response["$ref"].rsplit("/", 1)[-1]]
        if int(status) >= 400 and path != "/readyz":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if status in {"429", "503"}:
            assert response["headers"]["Retry-After"] == {
                "description": "Seconds to wait before retrying", "required": True, "schema": {"type": "integer", "minimum": 0}}


def test_limits_known_at_run_time_are_stated() -> None:
    spec = document(n_features=7, max_instances=50)
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    features, instances = body[0]["properties"]["features"], body[1]["properties"]["instances"]
    assert (features["minItems"], features["maxItems"]) == (7, 7)
    assert instances["maxItems"] == 50 and instances["items"] == features
    claims = spec["components"]["schemas"]["ClaimsRequest"]["properties"]
    assert claims["count"]["maximum"] == MAX_COUNT
    unknown = document(n_features=None)["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "maxItems" not in unknown["oneOf"][0]["properties"]["features"]


def test_the_admin_token_is_declared_only_when_set() -> None:
    assert document(bearer=True)["paths"]["/publish_inference_claims"]["post"]["security"] == [{"adminToken": []}]
    assert "security" not in document(bearer=False)["paths"]["/publish_inference_claims"]["post"]
