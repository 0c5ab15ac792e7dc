"""HTTP request parsing is total: for ANY input each parser returns a value or raises ApiError with a 4xx
status, and nothing else escapes it (a stray ValueError or RecursionError would be a 500).

Properties over arbitrary bytes, arbitrary JSON texts (including what json.dumps never writes: nesting
deeper than the recursion limit, integers over Python's 4,300-digit limit, overflowing exponents, NaN and
Infinity literals, lone surrogates in escapes, duplicate keys) and arbitrary header dicts. Example counts
come from the hypothesis profile (tests/conftest.py): short in `make test`, long in `make fuzz`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webapp.errors import ApiError
from webapp.parsing import DEADLINE_HEADER, TIMEOUT_HEADER, PredictRequest, backlog_deadline, parse_deadline, parse_json, parse_predict
from webapp.publish import MAX_COUNT, MAX_KEY_CHARS, MAX_TTL_MS, ClaimsRequest, parse_claims

pytestmark = pytest.mark.fuzz

T = TypeVar("T")

# -- inputs ----------------------------------------------------------------------------------------------

# Unicode text, lone surrogates included (hypothesis leaves them out of text() unless asked).
_chars = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
texts = st.text(_chars, max_size=20)
numbers = (st.integers() | st.floats() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, 2**64 + 1]))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda children: st.lists(children, max_size=8) | st.dictionaries(texts, children, max_size=8),
    max_leaves=40,
)


def _dumps(value: Any, ascii_only: bool, spaced: bool) -> str:
    # allow_nan: Python writes NaN and Infinity literals for non-finite floats, which is part of the point.
    return json.dumps(value, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))


dumped = st.builds(_dumps, json_values, st.booleans(), st.booleans())

# Fragments json.dumps never writes, to splice into bodies.
depths = st.integers(min_value=0, max_value=200_000)
fragments = st.one_of(
    depths.map(lambda n: "[" * n + "]" * n),
    depths.map(lambda n: '{"a":' * n + "1" + "}" * n),
    depths.map(lambda n: "[" * n),  # never closed
    st.integers(min_value=4_000, max_value=6_000).map(lambda n: "7" * n),  # around the int-digits limit
    st.integers(min_value=4_000, max_value=6_000).map(lambda n: "-" + "1" * n + ".5e3"),
    st.sampled_from(["1e400", "-1e400", "1E+999999", "1e-400", "0.1e99999999999999999999", "NaN", "Infinity",
                     "-Infinity", "-0", "00", "01", "1.", ".5", "+1", "0x10", "true", "null", "TRUE", "nan"]),
    st.sampled_from(['"\\ud800"', '"\\udfff\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\x"', '"\\u12"', '"\ufeff"']),
    texts.map(lambda text: json.dumps(text)),
    st.integers(min_value=0, max_value=3_000).map(lambda n: "{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}"),
    st.integers(min_value=0, max_value=3_000).map(lambda n: "[" + ",".join("1" for _ in range(n)) + "]"),
    dumped,
)
# Bodies shaped like the real ones, with a fragment where a value goes, duplicate keys written out.
templates = st.sampled_from([
    '{"features": [%s]}', '{"features": %s}', '{"instances": [[%s]]}', '{"instances": %s}',
    '{"features": [1], "features": %s}', '{"instances": [[1]], "features": [%s]}', '{%s: [1]}',
    '{"count": %s, "object_key": "k"}', '{"count": 1, "object_key": %s}', '{"count": 1, "object_key": "k", "ttl_ms": %s}',
    '{"count": 1, "count": %s, "object_key": "k", "object_key": "k"}', '{"count": 1, "object_key": "k", "bucket": %s}',
    "%s", "[%s]", " %s ", "\ufeff%s",
])
json_texts = dumped | fragments | st.builds(lambda template, fragment: template % fragment, templates, fragments)




def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes that UTF-8 forbids


def _encoded(text: str, codec: str) -> bytes:
    return text.encode(codec, "replace")


def _loaded(text: str) -> Any:
    """The value of a JSON text where Python can read it (the text itself otherwise, a JSON string too)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


bodies = st.one_of(
    st.binary(max_size=512),
    json_texts.map(_utf8),
    st.builds(_encoded, json_texts, st.sampled_from(["utf-16", "utf-32", "latin-1"])),  # JSON, but not UTF-8
)
# What parse_predict is handed: any JSON value, values parsed from the texts above, and objects with the
# expected keys holding anything.
predict_bodies = st.one_of(
    json_values,
    json_texts.map(_loaded),
    st.dictionaries(st.sampled_from(["features", "instances", "extra"]), json_values | json_texts.map(_loaded), max_size=3),
)
mimetypes = st.sampled_from(["application/json", "application/problem+json", "text/plain", "", "application/x-www-form-urlencoded"]) | texts

# Header values as waitress hands them over (latin-1 text), plus arbitrary text and decimal strings.
header_values = (st.text(st.characters(max_codepoint=0xFF), max_size=24) | texts
                 | st.integers(min_value=-(10**20), max_value=10**20).map(str)
                 | st.integers(min_value=0, max_value=10**17).map(lambda n: f" {n}\t"))
header_names = st.sampled_from([DEADLINE_HEADER, TIMEOUT_HEADER, "Content-Type", "x-request-timeout-ms"]) | texts
headers = st.dictionaries(header_names, header_values, max_size=4)
cgi_names = st.sampled_from(["X_REQUEST_DEADLINE_MS", "X_REQUEST_TIMEOUT_MS", "CONTENT_TYPE"]) | texts
cgi_headers = st.dictionaries(cgi_names, header_values, max_size=4)
epoch_ms = st.integers(min_value=0, max_value=10**13)


def total(call: Callable[[], T]) -> T | ApiError:
    """Run a parser: its value, or the ApiError it raised, which must be a 4xx with a code and a message.
    Any other exception fails the property."""
    try:
        return call()
    except ApiError as error:
        assert 400 <= error.status < 500, (error.status, error.code)
        assert error.code and error.message
        return error


# -- properties ------------------------------------------------------------------------------------------


@given(mimetypes, bodies)
def test_parse_json_is_total(mimetype: str, raw: bytes) -> None:
    total(lambda: parse_json(mimetype, raw))


@given(json_texts)
def test_parse_json_reads_every_json_text_or_says_400(text: str) -> None:
    outcome = total(lambda: parse_json("application/json", _utf8(text)))
    assert not isinstance(outcome, ApiError) or outcome.status == 400


@given(predict_bodies, st.integers(min_value=1, max_value=2_000))
def test_parse_predict_is_total(body: Any, max_instances: int) -> None:
    outcome = total(lambda: parse_predict(body, max_instances))
    if isinstance(outcome, PredictRequest):
        assert isinstance(outcome.rows, list) and 1 <= len(outcome.rows) <= max_instances
        assert outcome.single == (len(body) == 1 and "features" in body)


@given(headers, epoch_ms, st.integers(min_value=0, max_value=10**9))
def test_parse_deadline_is_total(given_headers: dict[str, str], now_ms: int, default_ttl_ms: int) -> None:
    outcome = total(lambda: parse_deadline(given_headers, now_ms, default_ttl_ms))
    if isinstance(outcome, ApiError):
        assert outcome.status == 400 and outcome.code == "invalid_deadline"
    elif DEADLINE_HEADER in given_headers or TIMEOUT_HEADER in given_headers:
        assert isinstance(outcome, int)
    else:
        assert outcome == now_ms + default_ttl_ms


@given(cgi_headers, epoch_ms, st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**6))
def test_backlog_deadline_is_total(given_headers: dict[str, str], arrived_ms: int, default_ttl_ms: int,
                                   inference_timeout_ms: int) -> None:
    outcome = total(lambda: backlog_deadline(default_ttl_ms, inference_timeout_ms)(given_headers, arrived_ms))
    if not isinstance(outcome, ApiError):
        assert outcome <= arrived_ms + inference_timeout_ms


@given(bodies, texts)
def test_parse_claims_is_total(raw: bytes, default_bucket: str) -> None:
    outcome = total(lambda: parse_claims(raw, default_bucket))
    if isinstance(outcome, ApiError):
        assert outcome.status == 400
    else:
        assert isinstance(outcome, ClaimsRequest) and 1 <= outcome.count <= MAX_COUNT
        assert outcome.ttl_ms is None or 1 <= outcome.ttl_ms <= MAX_TTL_MS
        assert 0 < len(outcome.object_key) <= MAX_KEY_CHARS and isinstance(outcome.bucket, str)
