"""ADMIN_TOKEN on POST /publish_inference_claims: only `Bearer <token>` passes, every other Authorization
header (missing, another scheme, a prefix of the token, bytes that are not ASCII) is 401 with the JSON error
body, never a 500; and the comparison is constant time (`hmac.compare_digest` over fixed-length digests)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

import webapp
from settings import Settings

TOKEN = "s3cret-Admin-T0ken"
# An invalid body: a request that got past the token check answers 400, so no Kafka is needed here.
INVALID_BODY = {"count": 0, "object_key": "x.parquet"}


def client_for(token: str) -> FlaskClient:
    settings = Settings(enable_test_endpoints=True, admin_token=token)
    return webapp.create_app(settings, start=False).test_client()  # start=False: nothing to stop


@pytest.fixture
def client() -> Iterator[FlaskClient]:
    yield client_for(TOKEN)


def wire(text: str) -> str:
    """A header value as a WSGI server hands it over: the client's UTF-8 bytes decoded as latin-1."""
    return text.encode().decode("latin-1")


@pytest.mark.parametrize("header", [
    None,
    "",
    "Bearer",
    "Bearer ",
    TOKEN,
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    f"Bearer{TOKEN}",
    f"Bearer  {TOKEN}",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN[:1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN} ",
    f"Bearer {TOKEN.upper()}",
    f"Bearer {TOKEN}\x00",
    "Bearer t\u00f6k\u00e9n",
    wire("Bearer t\u00f6k\u00e9n\u20ac"),
    "Bearer \u00ff\u00fe\u00fd",
    "Bearer \u20ac\U0001f511",
], ids=lambda header: repr(header)[:40])
def test_anything_but_the_bearer_token_is_401(client: FlaskClient, header: str | None) -> None:
    # Given ADMIN_TOKEN set, and an Authorization header that is missing, of another scheme, a prefix or an
    # extension of the token, or bytes outside ASCII
    headers = {} if header is None else {"Authorization": header}
    # When the endpoint is called
    response = client.post("/publish_inference_claims", json=INVALID_BODY, headers=headers)
    # Then it is refused 401 with the JSON error body and a Bearer challenge
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_token_passes_in_any_scheme_case(client: FlaskClient, scheme: str) -> None:
    # When the right token is sent (RFC 9110: the scheme is case-insensitive)
    response = client.post("/publish_inference_claims", json=INVALID_BODY, headers={"Authorization": f"{scheme} {TOKEN}"})
    # Then the request gets past authorization to the body check
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_request"


def test_a_non_ascii_token_sent_as_utf8_passes() -> None:
    # Given an ADMIN_TOKEN outside ASCII
    token = "t\u00f6k\u00e9n-\u20ac-\U0001f511"
    client = client_for(token)
    # When a client sends it UTF-8 encoded (as WSGI hands it over) and when it sends it latin-1 mangled
    right = client.post("/publish_inference_claims", json=INVALID_BODY, headers={"Authorization": wire(f"Bearer {token}")})
    mangled = client.post("/publish_inference_claims", json=INVALID_BODY,
                          headers={"Authorization": "Bearer t\u00f6k\u00e9n-?-?"})
    # Then the UTF-8 one passes and the other is 401, neither a 500
    assert right.status_code == 400
    assert mangled.status_code == 401


def test_no_token_configured_needs_no_header() -> None:
    # Given ADMIN_TOKEN unset
    client = webapp.create_app(Settings(enable_test_endpoints=True), start=False).test_client()
    # When the endpoint is called without Authorization, Then it gets past authorization
    assert client.post("/publish_inference_claims", json=INVALID_BODY).status_code == 400


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch, client: FlaskClient) -> None:
    # Given every comparison recorded
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)  # the module webapp.publish calls it through
    # When a short wrong token, a long wrong token and the right one are sent
    for token in ("x", "y" * 500, TOKEN):
        client.post("/publish_inference_claims", json=INVALID_BODY, headers={"Authorization": f"Bearer {token}"})
    # Then each went through hmac.compare_digest, on operands of one length whatever the token's length
    assert len(compared) == 3
    assert {len(a) for a, _ in compared} | {len(b) for _, b in compared} == {32}
