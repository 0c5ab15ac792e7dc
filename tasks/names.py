"""S3 names: which bucket names and object keys the claims' producers (the bridge, the publish endpoint)
pass on to the workers. Pure; each rule is also a regular expression for the OpenAPI document.

Buckets follow S3's naming rules: 3-63 characters, dot-separated labels of lowercase letters, digits and
hyphens that begin and end with a letter or digit, not an IPv4 address. The object store client refuses
other names before any request, outside a claim's own error handling: one such claim would fail its whole
batch, valid claims with it. Object keys: at most 1,024 bytes of UTF-8 (S3's limit), not blank, no control
characters, no `.` or `..` segments (the client refuses those too).
"""

from __future__ import annotations

import re

MAX_OBJECT_KEY_BYTES = 1024
# The patterns are for JSON Schema (ECMA 262) and Python alike; each opens by refusing any newline, as
# Python's `$` (and a regex search) would take a name followed by one.
_NO_NEWLINE = r"(?![\s\S]*\n)"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
BUCKET_PATTERN = rf"^{_NO_NEWLINE}(?![0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$){_LABEL}(?:\.{_LABEL})*$"
OBJECT_KEY_PATTERN = rf"^{_NO_NEWLINE}(?!\s*$)(?![\s\S]*(?:^|/)\.{{1,2}}(?:/|$))[^\x00-\x1f\x7f]+$"
_BUCKET = re.compile(BUCKET_PATTERN)
_OBJECT_KEY = re.compile(OBJECT_KEY_PATTERN)


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` cannot name an S3 bucket, or None when it can."""
    if not 3 <= len(bucket) <= 63 or not _BUCKET.match(bucket):
        return "a bucket name is 3-63 lowercase letters, digits, dots and hyphens in dot-separated labels, not an IP address"
    return None


def object_key_problem(key: str) -> str | None:
    """Why `key` cannot name an object, or None when it can."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "an object key is text (no lone surrogates)"
    if size > MAX_OBJECT_KEY_BYTES or not _OBJECT_KEY.match(key):
        return f"an object key is at most {MAX_OBJECT_KEY_BYTES} bytes of UTF-8, not blank, without control characters or '.' or '..' segments"
    return None
