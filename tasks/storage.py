"""The object store: a small adapter over the MinIO client that speaks our errors.

Works against MinIO, AWS S3 or any S3-compatible server. Every call either returns or raises
`ObjectMissing` / `StorageUnavailable`; MinIO's and urllib3's exceptions never leave this module.

A read of a name that no object of ours can have on MinIO is `ObjectMissing` before any request: a bucket
name S3 does not allow, a key with an empty segment (`a//b`), a leading or a trailing slash, or a `.`/`..`
segment. Such names come from callers (claims, download paths), and servers disagree on them: MinIO refuses
`a//b` and `/a` (400, which would read as "storage unavailable") and has no `dir/` unless one was written;
SeaweedFS, a file system underneath, reads `a//b` as `a/b` and any folder `dir/` as an empty object; moto
keeps `a//b` and `/a` as objects of their own; the MinIO client itself raises ValueError for the rest.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from settings import Settings
from tasks.errors import ObjectMissing, StorageUnavailable

_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
# Names the server refuses as names: no object has them, and asking again will not change that.
_UNNAMEABLE = {"KeyTooLongError", "InvalidObjectName", "InvalidBucketName"}


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except S3Error as error:
        if error.code in _MISSING or error.code in _UNNAMEABLE:
            raise ObjectMissing(f"{what}: {error.code}") from None
        raise StorageUnavailable(f"{what}: {error.code}") from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as error:
        raise StorageUnavailable(f"{what}: {type(error).__name__}") from None


def _check_readable(bucket: str, key: str) -> None:
    """ObjectMissing for a name no object can have on MinIO (see the module's docstring)."""
    try:
        check_bucket_name(bucket)
    except ValueError:
        raise ObjectMissing(f"{bucket}/{key}: not a valid bucket name") from None
    if not key or key.startswith("/") or key.endswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        raise ObjectMissing(f"{bucket}/{key}: not a valid object name")


class ObjectStore:
    def __init__(self, settings: Settings, *, timeout_s: float = 5.0, retries: int = 1) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 2.0), read=timeout_s),
            maxsize=32,
            retries=urllib3.Retry(total=retries, backoff_factor=0.1, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            http_client=http,
            region="us-east-1",
        )

    def ping(self) -> None:
        with _translated("ping"):
            self.client.bucket_exists("ping-probe")

    def ensure_bucket(self, bucket: str) -> None:
        with _translated(f"bucket {bucket}"):
            if not self.client.bucket_exists(bucket):
                try:
                    self.client.make_bucket(bucket)
                except S3Error as error:
                    if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise

    def get_bytes(self, bucket: str, key: str) -> bytes:
        _check_readable(bucket, key)
        with _translated(f"{bucket}/{key}"):
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with _translated(f"{bucket}/{key}"):
            self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def stream(self, bucket: str, key: str, offset: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
        """The object's bytes [offset, offset + length) in chunks; the connection is opened before this
        returns (errors surface here) and released when the iterator is exhausted or closed."""
        _check_readable(bucket, key)
        with _translated(f"{bucket}/{key}"):
            response = self.client.get_object(bucket, key, offset=offset, length=length)

        def chunks() -> Iterator[bytes]:
            try:
                with _translated(f"{bucket}/{key}"):
                    yield from response.stream(chunk_bytes)
            finally:
                response.close()
                response.release_conn()

        return chunks()

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except ObjectMissing:
            return False
        return True

    def stat(self, bucket: str, key: str) -> Any:
        _check_readable(bucket, key)
        with _translated(f"{bucket}/{key}"):
            return self.client.stat_object(bucket, key)


def wait_for_storage(store: ObjectStore, timeout_s: float) -> None:
    """Block until the object store answers, or raise StorageUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.ping()
            return
        except StorageUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
