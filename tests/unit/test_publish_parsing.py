"""Reading a POST /publish_inference_claims body: the limits of one request and every rejection's code."""

import pytest

from webapp.errors import ApiError
from webapp.publish import MAX_COUNT, MAX_KEY_CHARS, MAX_TTL_MS, ClaimsRequest, parse_claims

BUCKET = "processed-data"


def test_defaults_the_bucket_and_leaves_the_ttl_out() -> None:
    assert parse_claims(b'{"count": 3, "object_key": "demo/features.parquet"}', BUCKET) == \
        ClaimsRequest(count=3, bucket=BUCKET, object_key="demo/features.parquet", ttl_ms=None)


def test_reads_every_field() -> None:
    raw = b'{"count": 2, "ttl_ms": 5000, "bucket": "other", "object_key": "k"}'
    assert parse_claims(raw, BUCKET) == ClaimsRequest(count=2, bucket="other", object_key="k", ttl_ms=5000)


def test_an_integral_number_written_with_a_fraction_is_that_integer() -> None:
    # JSON (and JSON Schema's "integer") make no difference between 5 and 5.0; Python reads 5.0 as a float
    assert parse_claims(b'{"count": 5.0, "object_key": "k", "ttl_ms": 1e3}', BUCKET) == \
        ClaimsRequest(count=5, bucket=BUCKET, object_key="k", ttl_ms=1000)


def test_a_null_ttl_means_none() -> None:
    assert parse_claims(b'{"count": 1, "object_key": "k", "ttl_ms": null}', BUCKET).ttl_ms is None


def test_the_count_limit_itself_is_accepted() -> None:
    # Given a body asking for exactly MAX_COUNT claims, When it is read, Then it is accepted as is
    assert parse_claims(b'{"count": %d, "object_key": "k"}' % MAX_COUNT, BUCKET).count == MAX_COUNT


def test_a_count_over_the_limit_is_400() -> None:
    # Given a body asking for one claim more than MAX_COUNT, When it is read, Then it is refused with 400
    with pytest.raises(ApiError) as raised:
        parse_claims(b'{"count": %d, "object_key": "k"}' % (MAX_COUNT + 1), BUCKET)
    assert (raised.value.status, raised.value.code) == (400, "invalid_request")
    assert str(MAX_COUNT) in raised.value.message


@pytest.mark.parametrize("raw, code", [
    (b"", "invalid_json"),
    (b"not json", "invalid_json"),
    (b"\xff", "invalid_json"),
    (b'{"count": NaN, "object_key": "k"}', "non_finite_number"),
    (b'{"count": ' + b"1" * 5000 + b', "object_key": "k"}', "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    (b"[]", "invalid_request"),
    (b'{"object_key": "k"}', "invalid_request"),
    (b'{"count": 0, "object_key": "k"}', "invalid_request"),
    (b'{"count": 1.5, "object_key": "k"}', "invalid_request"),
    (b'{"count": 1e300, "object_key": "k"}', "invalid_request"),
    (b'{"count": 1e400, "object_key": "k"}', "invalid_request"),
    (b'{"count": true, "object_key": "k"}', "invalid_request"),
    (b'{"count": "1", "object_key": "k"}', "invalid_request"),
    (b'{"count": 1}', "invalid_request"),
    (b'{"count": 1, "object_key": ""}', "invalid_request"),
    (b'{"count": 1, "object_key": "%s"}' % (b"k" * (MAX_KEY_CHARS + 1)), "invalid_request"),
    (b'{"count": 1, "object_key": "k", "bucket": null}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "bucket": "Not_A_Bucket"}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "bucket": "10.0.0.1"}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "bucket": "ab"}', "invalid_request"),
    (b'{"count": 1, "object_key": "a/../b"}', "invalid_request"),
    (b'{"count": 1, "object_key": "a\\u0000b"}', "invalid_request"),
    (b'{"count": 1, "object_key": "   "}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "ttl_ms": 0}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "ttl_ms": %d}' % (MAX_TTL_MS + 1), "invalid_request"),
    (b'{"count": 1, "object_key": "k", "ttl_ms": "5"}', "invalid_request"),
    (b'{"count": 1, "object_key": "k", "colour": "red"}', "invalid_request"),
])
def test_rejections(raw: bytes, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_claims(raw, BUCKET)
    assert (raised.value.status, raised.value.code) == (400, code)
