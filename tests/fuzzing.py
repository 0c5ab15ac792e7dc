"""How hard the fuzz tests push: a short run in `make test`, a long one in `make fuzz` (FUZZ_PROFILE=long).

Hypothesis properties take their example counts from the profile loaded in tests/conftest.py; the fuzzers
that are not hypothesis properties (schemathesis, the raw-socket and Kafka record fuzzers) size their runs
with `scaled`."""

from __future__ import annotations

import os

PROFILE = os.environ.get("FUZZ_PROFILE", "short")
LONG = PROFILE == "long"
#: Examples per hypothesis property in each profile.
EXAMPLES = {"short": 200, "long": 10_000}


def scaled(short: int, long: int) -> int:
    """`short` in `make test`, `long` in `make fuzz`."""
    return long if LONG else short
