"""GET /download_processed/<object_key>: stream an object from BUCKET_PROCESSED, with single-range support.

The body is streamed in fixed chunks straight from object storage, so memory stays flat whatever the
object's size. One byte range is served (206); a range beyond the object, or several ranges, is 416; a
malformed Range header is ignored (RFC 9110). Keys are checked before anything else (`check_key`), and only
BUCKET_PROCESSED is ever read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unicodedata import category, normalize
from urllib.parse import unquote

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug.datastructures import ContentRange
from werkzeug.routing import PathConverter

from tasks.errors import ObjectMissing, StorageUnavailable
from webapp.errors import ApiError

downloads = Blueprint("downloads", __name__)

# Larger chunks mean fewer trips through the interpreter per megabyte (less GIL traffic with many
# downloads at once); each in-flight chunk is held in memory once per download.
CHUNK_BYTES = 256 * 1024
# S3 limits a key to 1,024 bytes of UTF-8, not characters.
MAX_KEY_BYTES = 1024
# Characters that render as a slash or a backslash but that NFKC leaves alone; a reader, a log viewer or a
# tool that folds look-alikes would take them for separators. (Fullwidth and small forms NFKC-fold to the
# ASCII ones and are caught through the normal form.)
SLASH_LOOKALIKES = frozenset("\u2044\u2215\u29f8\u2571\u2216\u29f5\u29f9")
# Unicode control and format characters (NUL, DEL, zero-width, bidi overrides), lone surrogates, line and
# paragraph separators: invisible or line-breaking in logs and listings, never part of a real file name.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
REPLACEMENT = "\ufffd"  # what a URL's invalid UTF-8 decodes to: the caller's bytes are not the key we would read


class KeyConverter(PathConverter):
    """Werkzeug's `path`, but matching a leading slash and line breaks too, so that such keys reach
    `check_key` and get its 400 rather than a 404."""

    part_isolating = False
    regex = r"[\s\S]+?"


@downloads.record_once
def _add_key_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters["object_key"] = KeyConverter


def check_key(key: str) -> str:
    """Return `key` when it is a safe relative object key, else raise 400 `invalid_key`.

    Refused: an empty key, one over 1,024 bytes of UTF-8, and any key that is, or would become after NFKC
    folding or one more percent-decoding (by a proxy or a client that decodes twice), absolute, or has a
    `.` or `..` segment, a backslash, a slash substitute or look-alike, a character of REFUSED_CATEGORIES or U+FFFD.
    Everything else is taken as written: spaces, letters of any script, `%`, empty segments."""
    if not key or not _fits(key):
        raise _invalid()
    for form in {key, unquote(key)}:
        folded = normalize("NFKC", form)
        # A character that folds into a slash (fullwidth solidus, U+2100 ACCOUNT OF) is a slash substitute.
        if not (_safe(form) and _safe(folded)) or folded.count("/") != form.count("/"):
            raise _invalid()
    return key


def _fits(key: str) -> bool:
    try:
        return len(key.encode("utf-8")) <= MAX_KEY_BYTES
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False


def _safe(form: str) -> bool:
    return not (form.startswith("/") or "\\" in form or REPLACEMENT in form
                or any(char in SLASH_LOOKALIKES or category(char) in REFUSED_CATEGORIES for char in form)
                or any(part in {".", ".."} for part in form.split("/")))


def _invalid() -> ApiError:
    return ApiError(400, "invalid_key", "The object key must be a relative path of at most 1024 bytes, without "
                    "'.' or '..' segments, backslashes, or control or format characters.")


@contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except ObjectMissing:
        raise ApiError(404, "object_missing", "No such object.") from None
    except StorageUnavailable:
        raise ApiError(503, "storage_unavailable", "Object storage is unreachable; retry shortly.", {"Retry-After": "2"}) from None


# merge_slashes=False: `a//b` is a key of its own, not a redirect to `a/b`.
@downloads.get("/download_processed/<object_key:object_key>", merge_slashes=False)
def download_processed(object_key: str) -> Response:
    gateway = current_app.extensions["gateway"]
    key = check_key(object_key)
    bucket = gateway.settings.bucket_processed
    store = gateway.downloads
    with storage_errors():
        stat = store.stat(bucket, key)
    size = int(stat.size)
    status, offset, length = 200, 0, size
    headers = {"Accept-Ranges": "bytes"}
    if stat.etag:
        headers["ETag"] = f'"{stat.etag}"'
    if request.range is not None and request.range.units == "bytes":
        span = request.range.range_for_length(size) if len(request.range.ranges) == 1 else None
        if span is None:
            raise ApiError(416, "range_not_satisfiable", "The requested range is not satisfiable.",
                           {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
        offset, stop = span
        status, length = 206, stop - offset
        headers["Content-Range"] = ContentRange("bytes", offset, stop, size).to_header()
    with storage_errors():
        chunks = store.stream(bucket, key, offset, length, CHUNK_BYTES) if length else iter(())
    headers["Content-Length"] = str(length)
    return Response(chunks, status=status, headers=headers, mimetype=stat.content_type or "application/octet-stream",
                    direct_passthrough=True)
