"""Property tests of the bridge's parsers: whatever a record holds, each returns a value or raises
`ClaimRejected` with a docs/interface.md code, and nothing else escapes (a stray exception stops the poll loop).

Inputs: arbitrary bytes; arbitrary JSON; JSON written as raw text where json.dumps cannot go (nesting
tens of thousands deep, numbers past Python's 4,300-digit limit, duplicate keys, lone surrogates);
claim- and model-shaped objects whose fields are drawn from valid and hostile values; arbitrary header
lists. Example counts come from the hypothesis profile (tests/conftest.py): `make fuzz` runs them long.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from bridge.claim import _CLAIM_ID, MAX_DEADLINE_MS, Claim, parse_claim, parse_deadline, parse_key, parse_value
from bridge.deadletter import dlq_headers
from bridge.dispatch import Record
from bridge.errors import ClaimRejected
from bridge.models import Training, parse_selected, parse_training
from bridge.payload import MAX_OBJECT_KEY_BYTES, MAX_TEXT_CHARS, bucket_problem
from tasks.metrics import DLQ_ERRORS
from tasks.model_store import Pointer

pytestmark = pytest.mark.fuzz

VALUE_CODES = {"invalid_json", "invalid_claim"}
CLAIM_CODES = VALUE_CODES | {"invalid_deadline"}

# -- building blocks ---------------------------------------------------------------------------------

# Every code point, lone surrogates included (json.dumps escapes them, json.loads gives them back), with the
# awkward ones drawn often.
any_char = st.characters(codec=None, categories=None) | st.sampled_from(["\ud800", "\udfff", "\x00", "\x1f", "\x7f",
                                                                         "\u2028", "\ufeff", "/", ".", " "])
texts = st.text(any_char, max_size=40)
# Long strings cost one draw each: a short piece repeated up to ~110,000 times (100 KiB and more).
long_texts = st.builds(lambda piece, times: piece * times, st.text(any_char, min_size=1, max_size=4),
                       st.integers(1_000, 110_000))
huge_numbers = st.builds(lambda sign, digits, tail: sign + "9" * digits + tail, st.sampled_from(["", "-"]),
                         st.integers(4_000, 6_000), st.sampled_from(["", ".5", "e5", "e999999", "0" * 100]))
depths = st.integers(1, 60_000)


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def deep_array(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def deep_object(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


deep_json = st.one_of(
    st.builds(deep_array, depths),
    st.builds(deep_object, depths),
    st.builds(lambda d: "[" * d, depths),  # never closed
    st.builds(lambda d, e: deep_array(d, deep_object(e)), depths, depths),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(texts, children, max_size=6),
    max_leaves=30,
)
# A field value as raw JSON text: valid, wrong-typed, long or hostile; now and then one that breaks the
# whole document (nested too deep, a number past the digit limit).
raw_json = st.one_of(
    json_values.map(dumps),
    texts.map(dumps),
    long_texts.map(dumps),
    st.sampled_from(['""', '" "', '"\\u0000"', '"\\ud800"', '"a/../b"', '"."', '"processed-data"',
                     '"demo/features.parquet"', '"c-1"', "NaN", "-Infinity", "1e400", "[]", "{}"]),
)
raw_values = st.one_of(raw_json, raw_json, raw_json, raw_json, huge_numbers, deep_json)


def raw_object(pairs: list[tuple[str, str]]) -> str:
    """A JSON object written as text, so that keys may repeat and values may be anything raw_values makes."""
    return "{" + ",".join(f"{dumps(key)}:{value}" for key, value in pairs) + "}"


# Field values that pass the checks, so that whole records get through now and then.
printable = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])
valid_fields: dict[str, st.SearchStrategy[str]] = {
    "claim_id": st.from_regex(_CLAIM_ID, fullmatch=True),
    "bucket": st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True) | st.just("processed-data"),
    "object_key": st.text(printable, min_size=1, max_size=60).filter(lambda key: key.strip() and "." not in key),
}
for _name in ("model_version", "model_name", "version", "run_id"):
    valid_fields[_name] = st.text(printable, min_size=1, max_size=60)


def field(name: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """One field as (name, raw JSON) pairs: valid (most often), missing, hostile, or written twice."""
    valid = valid_fields[name].map(dumps)
    return st.one_of(
        valid.map(lambda raw: [(name, raw)]),
        valid.map(lambda raw: [(name, raw)]),
        valid.map(lambda raw: [(name, raw)]),
        st.just([]),
        raw_values.map(lambda raw: [(name, raw)]),
        st.tuples(raw_values, valid).map(lambda pair: [(name, pair[0]), (name, pair[1])]),  # the last one wins
        st.tuples(valid, raw_values).map(lambda pair: [(name, pair[0]), (name, pair[1])]),
    )


def shaped(fields: list[str]) -> st.SearchStrategy[str]:
    """Objects with the record's own fields (each valid, missing, hostile or repeated) and some others."""
    extras = st.lists(st.tuples(texts, raw_json), max_size=3)
    return st.tuples(extras, *[field(name) for name in fields]).map(
        lambda parts: raw_object([pair for part in parts for pair in part]))


def wide_object(width: int) -> str:
    return raw_object([(f"k{i}", str(i)) for i in range(width)] + [("claim_id", '"wide"')])


def values_for(fields: list[str]) -> st.SearchStrategy[bytes | None]:
    """Values of a record: shaped like the record (most often), other JSON, deep or huge documents, long
    text, arbitrary bytes, UTF-8 broken at the end, or none."""
    def utf8_bytes(documents: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
        return documents.map(lambda doc: doc.encode("utf-8", "surrogatepass"))  # lone surrogates: not UTF-8

    records = utf8_bytes(shaped(fields))
    others = utf8_bytes(st.one_of(json_values.map(dumps), deep_json, huge_numbers, long_texts,
                                  st.builds(wide_object, st.integers(0, 20_000))))
    broken = st.builds(lambda doc, tail: doc + tail, records | others, st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    return st.one_of(records, records, records, others, broken, st.binary(max_size=300), st.none())


# Header lists as kafka-python hands them, and worse: str, bytes or odd keys, null or odd values,
# duplicate and empty names, entries that are not pairs.
header_keys = st.one_of(st.sampled_from(["deadline_ms", b"deadline_ms", "", b"", "error", "source_topic"]), texts,
                        st.binary(max_size=12), st.none(), st.integers())
header_values = st.one_of(
    st.none(), st.binary(max_size=30), texts, st.integers(),
    st.integers(0, 10**25).map(lambda n: str(n).encode()),
    st.sampled_from([b"1700000000000", b"253402300799999", b"253402300800000", b"0", b"-5", b"1.5", b" 1", "١٢٣"]),
)
header_entries = st.one_of(st.tuples(header_keys, header_values), st.lists(header_values, max_size=3), texts, st.none())
header_lists = st.one_of(st.none(), st.lists(header_entries, max_size=8), st.integers(), texts)
keys = st.one_of(st.none(), st.binary(max_size=300), texts, long_texts, st.integers(), st.floats())

CLAIM_FIELDS = ["claim_id", "bucket", "object_key", "model_version"]
SELECTED_FIELDS = ["model_name", "version", "bucket", "object_key"]
TRAINING_FIELDS = ["run_id", "bucket", "object_key"]


def outcome(parse: Any, *args: Any, codes: set[str]) -> Any:
    """What `parse` made of `args`: its value, or the ClaimRejected it raised (with one of `codes`)."""
    try:
        parsed = parse(*args)
    except ClaimRejected as rejected:
        assert rejected.code in codes, rejected.code
        event(rejected.code)  # shown by --hypothesis-show-statistics
        return rejected
    event("accepted")
    return parsed


def test_the_codes_are_the_contracts() -> None:
    assert set(DLQ_ERRORS) >= CLAIM_CODES


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def readable(text: str, max_chars: int = MAX_TEXT_CHARS) -> bool:
    return 0 < len(text) <= max_chars and utf8(text) and all(ord(c) >= 32 and ord(c) != 127 for c in text)


def usable_key(key: str) -> bool:
    return (0 < len(key.encode("utf-8")) <= MAX_OBJECT_KEY_BYTES and bool(key.strip())
            and not {".", ".."} & set(key.split("/")) and readable(key, MAX_OBJECT_KEY_BYTES))


# -- the properties ----------------------------------------------------------------------------------


@given(values_for(CLAIM_FIELDS))
def test_a_claim_value_is_an_object_or_rejected(value: bytes | None) -> None:
    parsed = outcome(parse_value, value, codes=VALUE_CODES)
    if isinstance(parsed, ClaimRejected):
        return
    assert isinstance(parsed, dict)
    assert value is not None


@given(st.one_of(st.builds(lambda depth: deep_array(depth).encode(), depths),
                 st.builds(lambda depth: deep_object(depth).encode(), depths)))
def test_nesting_past_the_recursion_limit_is_invalid_json(value: bytes) -> None:
    parsed = outcome(parse_value, value, codes=VALUE_CODES)
    if value.count(b"[") + value.count(b"{") > 10_000:
        assert isinstance(parsed, ClaimRejected) and parsed.code == "invalid_json"


@given(keys)
def test_a_key_is_loggable_text_or_none(key: object) -> None:
    text = parse_key(key)
    assert text is None or (0 < len(text) <= MAX_TEXT_CHARS and utf8(text))
    if isinstance(key, bytes) and key:
        assert text == key.decode("utf-8", "replace")[:MAX_TEXT_CHARS]


@given(header_lists)
def test_headers_give_a_deadline_none_or_invalid_deadline(headers: Any) -> None:
    parsed = outcome(parse_deadline, headers, codes={"invalid_deadline"})
    # A header is a (key, value) pair whose key, str or bytes, reads "deadline_ms"
    named = [entry[1] for entry in headers if isinstance(entry, tuple | list) and len(entry) == 2
             and (entry[0] == "deadline_ms" or isinstance(entry[0], bytes) and entry[0] == b"deadline_ms")] \
        if isinstance(headers, list) else []
    if not named:
        assert parsed is None
    elif not isinstance(parsed, ClaimRejected):
        assert isinstance(parsed, int) and 0 <= parsed <= MAX_DEADLINE_MS
        assert parsed == int(named[-1])  # the last one wins


@given(values_for(CLAIM_FIELDS), header_lists)
def test_a_claim_is_parsed_whole_or_rejected_with_its_code(value: bytes | None, headers: Any) -> None:
    parsed = outcome(parse_claim, value, headers, codes=CLAIM_CODES)
    if isinstance(parsed, ClaimRejected):
        return
    assert isinstance(parsed, Claim)
    assert _CLAIM_ID.fullmatch(parsed.claim_id)
    assert bucket_problem(parsed.bucket) is None and usable_key(parsed.object_key)
    assert parsed.model_version is None or readable(parsed.model_version)
    assert parsed.deadline_ms is None or 0 <= parsed.deadline_ms <= MAX_DEADLINE_MS


@given(values_for(SELECTED_FIELDS))
def test_a_model_selected_record_is_a_pointer_or_rejected(value: bytes | None) -> None:
    parsed = outcome(parse_selected, value, codes=VALUE_CODES)
    if isinstance(parsed, ClaimRejected):
        return
    assert isinstance(parsed, Pointer)
    assert readable(parsed.model_name) and readable(parsed.version) and readable(parsed.bucket)
    assert usable_key(parsed.object_key)


@given(values_for(TRAINING_FIELDS))
def test_a_model_training_record_is_a_run_or_rejected(value: bytes | None) -> None:
    parsed = outcome(parse_training, value, codes=VALUE_CODES)
    if isinstance(parsed, ClaimRejected):
        return
    assert isinstance(parsed, Training)
    assert readable(parsed.run_id) and readable(parsed.bucket) and usable_key(parsed.object_key)


@given(st.none() | st.binary(max_size=300), values_for(CLAIM_FIELDS), header_lists,
       st.sampled_from(sorted(CLAIM_CODES)), texts, st.none() | texts)
def test_dlq_headers_are_what_the_producer_takes(key: bytes | None, value: bytes | None, headers: Any, code: str,
                                                 message: str, source: str | None) -> None:
    record = Record("t", 0, 1, key, value, headers if isinstance(headers, list) else [])
    written = dlq_headers(record, code, message, source)
    # kafka-python's KafkaProducer.send refuses the record unless every header is a (str, bytes) pair with a
    # UTF-8 name
    assert all(isinstance(name, str) and isinstance(raw, bytes) and utf8(name) for name, raw in written)
    names = [name for name, _ in written]
    assert names.count("error") == 1 and names.count("error_message") == 1
    assert names.count("source_topic") == (0 if source is None else 1)
