"""GET /download_processed/<object_key>: stream an object from BUCKET_PROCESSED, with single-range support.

The body is streamed in fixed chunks straight from object storage, so memory stays flat whatever the
object's size. One byte range is served (206); a range beyond the object, or several ranges, is 416; a
malformed Range header is ignored (RFC 9110). Keys are checked before anything else: no absolute paths, no `..` segments, no control
characters; only BUCKET_PROCESSED is ever read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import ContentRange

from tasks.errors import ObjectMissing, StorageUnavailable
from webapp.errors import ApiError

downloads = Blueprint("downloads", __name__)

# Larger chunks mean fewer trips through the interpreter per megabyte (less GIL traffic with many
# downloads at once); each in-flight chunk is held in memory once per download.
CHUNK_BYTES = 256 * 1024
MAX_KEY_CHARS = 1024


def check_key(key: str) -> str:
    if (not key or len(key) > MAX_KEY_CHARS or key.startswith("/") or "\\" in key
            or any(ord(char) < 32 or ord(char) == 127 for char in key)
            or any(part in {"..", "."} for part in key.split("/"))):
        raise ApiError(400, "invalid_key", "The object key must be a relative path without '..' or control characters.")
    return key


@contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except ObjectMissing:
        raise ApiError(404, "object_missing", "No such object.") from None
    except StorageUnavailable:
        raise ApiError(503, "storage_unavailable", "Object storage is unreachable; retry shortly.", {"Retry-After": "2"}) from None


@downloads.get("/download_processed/<path:object_key>")
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
