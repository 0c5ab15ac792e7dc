"""Adversarial Kafka records for the bridge, each with what the bridge must make of it.

`claims(rng, ...)` and `model_records(rng, ...)` draw records of named kinds from a seeded `random.Random`:
the same seed gives the same records. Every record carries a unique `fuzz-id` header (headers go to the
DLQ as they were), so that a dead letter is matched to its record whatever its key; keys, other headers
and values are hostile: non-UTF-8 keys and header values, duplicate and empty header names, null values,
random bytes, nesting 50,000 deep, 5,000-digit numbers, wrong types, 100 KiB strings, deadlines missing,
past, future and malformed.

Expected outcomes: `computed` (a result object claims/<claim_id>.json), `expired` (logged ttl_expired,
never computed), or `dlq` with the docs/interface.md code the kind determines.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FUZZ_ID = "fuzz-id"
LATEST_DEADLINE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the latest a claim may carry


@dataclass(frozen=True)
class Fuzzed:
    topic: str  # "claims", "selected" or "training"
    kind: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    outcome: str  # "computed", "expired" or "dlq"
    code: str | None = None  # the DLQ code, for "dlq"
    claim_id: str | None = None  # for "computed" and "expired"

    @property
    def fuzz_id(self) -> bytes:
        return dict(self.headers)[FUZZ_ID]


Body = tuple[bytes | None, list[tuple[str, bytes]]]  # a value and the headers it needs


class Drawer:
    """Draws the pieces records are made of, from one seeded generator."""

    def __init__(self, rng: random.Random, prefix: str, bucket: str, object_key: str) -> None:
        self.rng = rng
        self.prefix = prefix
        self.bucket = bucket
        self.object_key = object_key
        self.count = 0

    def claim_id(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}"

    def blob(self, size: int = 24) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, size)))

    def key(self) -> bytes | None:
        """Keys mean nothing to the bridge: none, text, or bytes that are not UTF-8."""
        return self.rng.choice([None, b"", f"key-{self.rng.random()}".encode(), b"\xff\xfe" + self.blob(), self.blob()])

    def noise(self) -> list[tuple[str, bytes]]:
        """Headers around the ones that matter: non-UTF-8 values, repeated and empty names."""
        return self.rng.choice([
            [],
            [("trace", b"t1"), ("trace", b"t2")],
            [("", b"empty name"), ("blob", b"\xff\xfe" + self.blob())],
            [("error", b"a forged error header"), ("\u00e9t\u00e9", "caf\u00e9".encode())],
        ])

    def deep(self) -> bytes:
        depth = self.rng.choice([1_001, 5_000, 50_000])
        return self.rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth])

    def huge_number(self) -> bytes:
        return self.rng.choice([b"", b"-"]) + b"9" * 5_000

    def long_text(self) -> str:
        """100 KiB of UTF-8 (up to three times that as escaped JSON)."""
        piece = self.rng.choice(["x", "\u00e9", "\U0001f600", "/"])
        return piece * (100 * 1024 // len(piece.encode()))

    def wrong(self) -> Any:
        """A value of the wrong type for any string field (or an empty string)."""
        return self.rng.choice([None, 0, -1, 1.5, True, [], {}, ["a"], {"a": 1}, ""])

    def claim(self, claim_id: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"claim_id": claim_id, "bucket": self.bucket, "object_key": self.object_key, **(changes or {})}


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def _with_deadline(value: bytes, deadline: bytes) -> Body:
    return value, [("deadline_ms", deadline)]


def claim_kinds(d: Drawer) -> dict[str, Callable[[], tuple[str, str | None, str | None, Body]]]:
    """Kind name -> a function drawing (outcome, code, claim_id, (value, headers))."""
    now = int(time.time() * 1000)

    def good(deadline: bytes | None = None, **changes: Any) -> Callable[[], tuple[str, str | None, str | None, Body]]:
        def make() -> tuple[str, str | None, str | None, Body]:
            claim_id = d.claim_id()
            value = dumps(d.claim(claim_id, changes))
            return "computed", None, claim_id, (value, [] if deadline is None else [("deadline_ms", deadline)])
        return make

    def expired(deadline: bytes) -> Callable[[], tuple[str, str | None, str | None, Body]]:
        def make() -> tuple[str, str | None, str | None, Body]:
            claim_id = d.claim_id()
            return "expired", None, claim_id, _with_deadline(dumps(d.claim(claim_id)), deadline)
        return make

    def dlq(code: str, body: Callable[[], Body]) -> Callable[[], tuple[str, str | None, str | None, Body]]:
        return lambda: ("dlq", code, None, body())

    def bare(value: Callable[[], bytes | None]) -> Callable[[], Body]:
        return lambda: (value(), [])

    def field(name: str, value: Callable[[], Any]) -> Callable[[], Body]:
        return lambda: (dumps(d.claim(d.claim_id(), {name: value()})), [])

    return {
        # computed
        "valid, no deadline": good(),
        "valid, model_version": good(model_version="whatever-version"),
        "valid, deadline in 10 min": good(str(now + 600_000).encode()),
        "valid, deadline 9999-12-31": good(str(LATEST_DEADLINE_MS).encode()),
        "valid, duplicate keys, the last valid": lambda: _last_wins(d),
        # expired
        "deadline 0": expired(b"0"),
        "deadline an hour ago": expired(str(now - 3_600_000).encode()),
        # invalid_json
        "null value": dlq("invalid_json", bare(lambda: None)),
        "random bytes": dlq("invalid_json", bare(lambda: b"\xff" + d.blob(200))),
        "text": dlq("invalid_json", bare(lambda: b"not json " + str(d.rng.random()).encode())),
        "nested deep": dlq("invalid_json", bare(d.deep)),
        "a 5,000-digit number": dlq("invalid_json", bare(d.huge_number)),
        "a 5,000-digit claim_id": dlq("invalid_json", bare(lambda: b'{"claim_id": ' + d.huge_number() + b"}")),
        "a deep field": dlq("invalid_json", bare(lambda: b'{"claim_id": "x", "bucket": ' + d.deep() + b"}")),
        "UTF-8 broken": dlq("invalid_json", bare(lambda: dumps(d.claim(d.claim_id()))[:-2] + b"\xc3")),
        "UTF-16": dlq("invalid_json", bare(lambda: json.dumps(d.claim(d.claim_id())).encode("utf-16"))),
        "not JSON and a bad deadline": dlq("invalid_json", lambda: _with_deadline(b"{", b"soon")),
        # invalid_claim
        "JSON null": dlq("invalid_claim", bare(lambda: b"null")),
        "a JSON list": dlq("invalid_claim", bare(lambda: dumps([d.claim(d.claim_id())]))),
        "a JSON string": dlq("invalid_claim", bare(lambda: dumps(d.long_text()))),
        "no claim_id": dlq("invalid_claim", bare(lambda: dumps({"bucket": d.bucket, "object_key": d.object_key}))),
        "claim_id wrong type": dlq("invalid_claim", field("claim_id", d.wrong)),
        "bucket wrong type": dlq("invalid_claim", field("bucket", d.wrong)),
        "object_key wrong type": dlq("invalid_claim", field("object_key", d.wrong)),
        "model_version wrong type": dlq("invalid_claim", field("model_version", lambda: d.rng.choice([0, [], {}, True]))),
        "claim_id 100 KiB": dlq("invalid_claim", field("claim_id", d.long_text)),
        "object_key 100 KiB": dlq("invalid_claim", field("object_key", d.long_text)),
        "model_version 100 KiB": dlq("invalid_claim", field("model_version", d.long_text)),
        "claim_id a path": dlq("invalid_claim", field("claim_id", lambda: d.rng.choice(["../x", "a/b", ".hidden", "\u00e9"]))),
        "bucket not a bucket name": dlq("invalid_claim", field("bucket", lambda: d.rng.choice(["B", "ab", "10.0.0.1", "a..b", "a_b"]))),
        "object_key a lone surrogate": dlq("invalid_claim", bare(lambda: dumps(d.claim(d.claim_id(), {"object_key": "k\ud800"})))),
        "object_key with ..": dlq("invalid_claim", field("object_key", lambda: "demo/../features.parquet")),
        "duplicate keys, the last wrong": dlq("invalid_claim", bare(lambda: dumps(d.claim(d.claim_id()))[:-1] + b', "bucket": 7}')),
        # invalid_deadline
        "deadline not a number": dlq("invalid_deadline", lambda: _with_deadline(dumps(d.claim(d.claim_id())),
                                                                              d.rng.choice([b"soon", b"-5", b"1.5", b" 1", b""]))),
        "deadline not ASCII": dlq("invalid_deadline", lambda: _with_deadline(dumps(d.claim(d.claim_id())), b"\xff" + d.blob())),
        "deadline after 9999": dlq("invalid_deadline", lambda: _with_deadline(dumps(d.claim(d.claim_id())),
                                                                            str(LATEST_DEADLINE_MS + 1).encode())),
        "deadline 20 digits": dlq("invalid_deadline", lambda: _with_deadline(dumps(d.claim(d.claim_id())), b"9" * 20)),
        "two deadlines, the last bad": dlq("invalid_deadline", lambda: (dumps(d.claim(d.claim_id())),
                                                                        [("deadline_ms", b"1"), ("deadline_ms", b"x")])),
        # object_missing (the worker's answer)
        "object missing": dlq("object_missing", field("object_key", lambda: f"fuzz/missing-{d.rng.random()}.parquet")),
        "bucket missing": dlq("object_missing", field("bucket", lambda: f"no-such-bucket-{d.rng.randrange(10**6)}")),
    }


def _last_wins(d: Drawer) -> tuple[str, str | None, str | None, Body]:
    claim_id = d.claim_id()
    return "computed", None, claim_id, (b'{"bucket": 7, ' + dumps(d.claim(claim_id))[1:], [])


def claims(rng: random.Random, count: int, prefix: str, bucket: str, object_key: str) -> list[Fuzzed]:
    """`count` claims-topic records: about a third valid claims, the rest of every other kind, shuffled."""
    d = Drawer(rng, prefix, bucket, object_key)
    kinds = claim_kinds(d)
    valid = [name for name in kinds if name.startswith("valid")]
    others = [name for name in kinds if name not in valid]
    records = []
    for index in range(count):
        kind = rng.choice(valid) if index % 3 == 0 else others[index % len(others)] if index < 3 * len(others) \
            else rng.choice(others)
        outcome, code, claim_id, (value, headers) = kinds[kind]()
        records.append(Fuzzed("claims", kind, d.key(), value,
                              [(FUZZ_ID, f"{prefix}:{index}".encode()), *d.noise(), *headers], outcome, code, claim_id))
    rng.shuffle(records)
    return records


def model_records(rng: random.Random, count: int, prefix: str, topic: str, bucket: str) -> list[Fuzzed]:
    """`count` bad records for a model topic ("selected" or "training"): each goes to the DLQ."""
    d = Drawer(rng, prefix, bucket, "unused")
    fields = {"selected": ["model_name", "version", "bucket", "object_key"],
              "training": ["run_id", "bucket", "object_key"]}[topic]
    good = {name: f"{name}-{prefix}" for name in fields} | {"bucket": bucket}

    def missing_artifact() -> bytes:
        return dumps({**good, "object_key": f"models/fuzz/{d.rng.random()}/model.joblib"})

    def without_a_field() -> bytes:
        missing = d.rng.choice(fields)
        return dumps({name: value for name, value in good.items() if name != missing})

    kinds: dict[str, tuple[str, Callable[[], bytes | None]]] = {
        "null value": ("invalid_json", lambda: None),
        "random bytes": ("invalid_json", lambda: b"\xff" + d.blob(200)),
        "nested deep": ("invalid_json", d.deep),
        "a 5,000-digit number": ("invalid_json", d.huge_number),
        "a JSON list": ("invalid_claim", lambda: dumps([good])),
        "a field missing": ("invalid_claim", without_a_field),
        "a field of the wrong type": ("invalid_claim", lambda: dumps({**good, d.rng.choice(fields): d.wrong()})),
        "a field 100 KiB": ("invalid_claim", lambda: dumps({**good, d.rng.choice(fields): d.long_text()})),
    }
    if topic == "selected":
        kinds["an artifact not stored"] = ("object_missing", missing_artifact)
    names = sorted(kinds)
    records = []
    for index in range(count):
        kind = names[index % len(names)] if index < len(names) else rng.choice(names)
        code, value = kinds[kind]
        records.append(Fuzzed(topic, f"{topic}: {kind}", d.key(), value(),
                              [(FUZZ_ID, f"{prefix}:{topic}:{index}".encode()), *d.noise()], "dlq", code))
    return records
