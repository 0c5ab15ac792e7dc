"""The storage adapter (tasks/storage.py) against the session's real S3 server: what it returns and which of
our errors it raises, as the API (/download_processed), the workers and the bridge rely on.

Production runs MinIO; the tests run SeaweedFS, or moto's mock where SeaweedFS does not install. Where the
servers differ, the test says what MinIO does, and the adapter (or the local server's set-up) follows it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import psutil
import pytest
from pydantic import SecretStr

from devtools import seaweedfs
from devtools.services import Service, free_port, local_s3, start_s3
from settings import Settings
from tasks.errors import ObjectMissing, StorageUnavailable
from tasks.storage import ObjectStore, wait_for_storage

DATA = os.urandom(300 * 1024 + 7)
CHUNK = 64 * 1024
#: minio-py writes an object larger than 5 MiB in 5 MiB parts: 12 MiB + 1 byte is 3 parts.
LARGE = os.urandom(12 * 1024 * 1024 + 1)


@pytest.fixture(scope="module")
def store(base_settings: Settings) -> ObjectStore:
    return ObjectStore(base_settings)


@pytest.fixture(scope="module")
def bucket(store: ObjectStore) -> str:
    name = f"storage-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture(scope="module")
def stored(store: ObjectStore, bucket: str) -> str:
    """DATA under a key of its own."""
    key = f"data/{uuid.uuid4().hex[:8]}.bin"
    store.put_bytes(bucket, key, DATA)
    return key


def new_key(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


# -- what is written reads back ----------------------------------------------------------------------


def test_bytes_read_back_with_their_size_etag_and_content_type(store: ObjectStore, bucket: str) -> None:
    # Given an object written with a content type
    key = new_key()
    store.put_bytes(bucket, key, b'{"a": 1}', "application/json")
    # Then it reads back, and its stat says what the download view sends: size, ETag, content type
    assert store.get_bytes(bucket, key) == b'{"a": 1}'
    stat = store.stat(bucket, key)
    assert (stat.size, stat.content_type) == (8, "application/json")
    assert stat.etag == hashlib.md5(b'{"a": 1}').hexdigest()  # noqa: S324 - S3's ETag of a single-part object
    assert store.exists(bucket, key)


def test_a_zero_length_object_reads_back_empty(store: ObjectStore, bucket: str) -> None:
    key = new_key()
    store.put_bytes(bucket, key, b"")
    assert store.stat(bucket, key).size == 0
    assert store.get_bytes(bucket, key) == b""
    # The download view never asks for a range of it (a Range on an empty object is 416 everywhere); a
    # zero-length read (no Range header) streams nothing.
    assert list(store.stream(bucket, key, 0, 0, CHUNK)) == []


def test_a_large_object_is_written_in_parts_and_reads_back_whole(store: ObjectStore, bucket: str) -> None:
    # When an object over the client's 5 MiB part size is written
    key = new_key()
    store.put_bytes(bucket, key, LARGE)
    # Then it was a multipart upload (its ETag names the 3 parts, as MinIO's and S3's do) and reads back whole
    stat = store.stat(bucket, key)
    assert stat.size == len(LARGE) and stat.etag.endswith("-3")
    assert hashlib.sha256(store.get_bytes(bucket, key)).digest() == hashlib.sha256(LARGE).digest()
    assert hashlib.sha256(b"".join(store.stream(bucket, key, 0, len(LARGE), 256 * 1024))).digest() == \
        hashlib.sha256(LARGE).digest()


def test_ensure_bucket_twice_is_harmless(store: ObjectStore, bucket: str) -> None:
    store.ensure_bucket(bucket)
    store.ensure_bucket(bucket)


# -- ranges, as /download_processed streams them ------------------------------------------------------


@pytest.mark.parametrize("offset, length", [
    (0, 1),
    (100, 1000),
    (CHUNK - 1, 2),  # across a chunk boundary
    (len(DATA) - 10, 10),  # a range at the end
    (len(DATA) - 1, 1),  # the last byte
    (0, len(DATA)),
])
def test_a_range_streams_exactly_its_bytes_in_chunks_no_larger_than_asked(
        store: ObjectStore, bucket: str, stored: str, offset: int, length: int) -> None:
    chunks = list(store.stream(bucket, stored, offset, length, CHUNK))
    assert b"".join(chunks) == DATA[offset:offset + length]
    assert all(0 < len(chunk) <= CHUNK for chunk in chunks)


def test_a_stream_closed_early_gives_its_connection_back(store: ObjectStore, bucket: str, stored: str) -> None:
    # Given a stream abandoned after its first chunk (a client that went away)
    chunks = store.stream(bucket, stored, 0, len(DATA), CHUNK)
    assert next(chunks) == DATA[:CHUNK]
    chunks.close()
    # Then the adapter keeps working
    assert store.get_bytes(bucket, stored) == DATA


# -- missing things -----------------------------------------------------------------------------------


def test_a_missing_key_is_object_missing(store: ObjectStore, bucket: str) -> None:
    key = new_key("missing")
    for read in (store.get_bytes, store.stat, lambda b, k: store.stream(b, k, 0, 10, CHUNK)):
        with pytest.raises(ObjectMissing):
            read(bucket, key)
    assert not store.exists(bucket, key)


def test_a_missing_bucket_is_object_missing(store: ObjectStore) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    for read in (store.get_bytes, store.stat, lambda b, k: store.stream(b, k, 0, 10, CHUNK)):
        with pytest.raises(ObjectMissing):
            read(bucket, "any/key")
    assert not store.exists(bucket, "any/key")


def test_writing_to_a_missing_bucket_is_object_missing_and_creates_no_bucket(store: ObjectStore) -> None:
    # MinIO answers NoSuchBucket. SeaweedFS would create the bucket on the fly, unless told not to
    # (-s3.autoCreateBucket=false, devtools/seaweedfs.py).
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ObjectMissing):
        store.put_bytes(bucket, "k", b"x")
    assert not store.client.bucket_exists(bucket)


@pytest.mark.parametrize("name", ["a//b", "/a/b", "a/", "a/./b", "a/x/../b"])
def test_a_key_no_object_can_have_on_minio_is_missing_on_every_server(store: ObjectStore, bucket: str, name: str) -> None:
    # Given objects at <dir>/a/b and <dir>/a/x/b, so that a server that normalises paths would find one
    folder = new_key("names")
    store.put_bytes(bucket, f"{folder}/a/b", b"b")
    store.put_bytes(bucket, f"{folder}/a/x/b", b"xb")
    key = f"/{folder}{name}" if name.startswith("/") else f"{folder}/{name}"
    # Then a key MinIO refuses (`//`, a leading `/`: 400), or has no object for (a folder `a/`), or the
    # client refuses (`.`, `..`) is missing: SeaweedFS would read `a//b` as `a/b` and `a/` as an empty object
    for read in (store.get_bytes, store.stat, lambda b, k: store.stream(b, k, 0, 1, CHUNK)):
        with pytest.raises(ObjectMissing):
            read(bucket, key)
    assert not store.exists(bucket, key)


def test_a_key_over_1024_bytes_is_missing_never_unavailable(store: ObjectStore, bucket: str) -> None:
    # Given a key longer than S3 allows (MinIO and S3 answer KeyTooLongError, a name no object can have)
    key = new_key("long") + "/" + "k" * 1100
    # Then reading it is ObjectMissing (permanent), not StorageUnavailable (which would be retried)
    for read in (store.get_bytes, store.stat):
        with pytest.raises(ObjectMissing):
            read(bucket, key)


@pytest.mark.parametrize("bucket", ["ab", "Upper-Case", "under_score", "x" * 64])
def test_a_bucket_name_s3_does_not_allow_is_missing(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(ObjectMissing):
        store.get_bytes(bucket, "k")
    assert not store.exists(bucket, "k")


# -- listing ------------------------------------------------------------------------------------------


def test_a_prefix_lists_exactly_the_keys_that_start_with_it(store: ObjectStore, bucket: str) -> None:
    # As the tests and perf/ count claim results: a prefix that ends inside a name, not at a slash
    folder = new_key("claims")
    for name in ("run-1.json", "run-2.json", "other-1.json", "run-3/nested.json"):
        store.put_bytes(bucket, f"{folder}/{name}", b"{}")
    listed = [o.object_name for o in store.client.list_objects(bucket, prefix=f"{folder}/run-", recursive=True)]
    assert listed == [f"{folder}/run-1.json", f"{folder}/run-2.json", f"{folder}/run-3/nested.json"]
    shallow = [(o.object_name, o.is_dir) for o in store.client.list_objects(bucket, prefix=f"{folder}/")]
    assert shallow == [(f"{folder}/other-1.json", False), (f"{folder}/run-1.json", False),
                       (f"{folder}/run-2.json", False), (f"{folder}/run-3/", True)]


# -- failures -----------------------------------------------------------------------------------------


@pytest.mark.skipif(local_s3().name == "moto", reason="moto's mock accepts any signature")
@pytest.mark.parametrize("access_key, secret_key", [("minioadmin", "wrong-secret"), ("unknown-key", "minioadmin")])
def test_wrong_credentials_are_storage_unavailable_never_missing(
        base_settings: Settings, bucket: str, stored: str, access_key: str, secret_key: str) -> None:
    # MinIO (and SeaweedFS) refuse with 403: SignatureDoesNotMatch or InvalidAccessKeyId (AccessDenied for a
    # HEAD, which has no body). Nothing is missing: the store is unusable, as if unreachable.
    keys = {"s3_access_key": SecretStr(access_key), "s3_secret_key": SecretStr(secret_key)}
    wrong = ObjectStore(base_settings.model_copy(update=keys), retries=0)
    for call in (lambda: wrong.get_bytes(bucket, stored), lambda: wrong.stat(bucket, stored),
                 lambda: wrong.exists(bucket, stored), lambda: wrong.put_bytes(bucket, new_key(), b"x"),
                 lambda: wrong.stream(bucket, stored, 0, 10, CHUNK), wrong.ping):
        with pytest.raises(StorageUnavailable):
            call()


def test_a_server_that_does_not_answer_is_storage_unavailable(base_settings: Settings) -> None:
    # Given an endpoint where nothing listens
    nowhere = ObjectStore(base_settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"}), retries=0)
    for call in (lambda: nowhere.get_bytes("bucket", "k"), lambda: nowhere.stat("bucket", "k"),
                 lambda: nowhere.exists("bucket", "k"), lambda: nowhere.put_bytes("bucket", "k", b"x"),
                 lambda: nowhere.stream("bucket", "k", 0, 10, CHUNK), lambda: nowhere.ensure_bucket("bucket"),
                 nowhere.ping):
        with pytest.raises(StorageUnavailable):
            call()
    with pytest.raises(StorageUnavailable):
        wait_for_storage(nowhere, 0.5)


def test_a_server_that_dies_mid_stream_is_storage_unavailable(base_settings: Settings, tmp_path: Path) -> None:
    # Given a server of its own, streaming a large object
    own = start_s3(workdir=tmp_path)
    try:
        settings = base_settings.model_copy(update={"s3_endpoint": own.address})
        store = ObjectStore(settings, retries=0)
        store.ensure_bucket("dying")
        store.put_bytes("dying", "large.bin", LARGE * 3)
        chunks = store.stream("dying", "large.bin", 0, 3 * len(LARGE), CHUNK)
        assert next(chunks) == LARGE[:CHUNK]
        # When the server is killed before the rest is read
        assert own.process is not None
        own.process.kill()
        own.process.wait(10)
        # Then reading on is StorageUnavailable, not a short object nor urllib3's error
        with pytest.raises(StorageUnavailable):
            for _ in chunks:
                pass
    finally:
        own.stop()


# -- the local server itself --------------------------------------------------------------------------


@pytest.mark.skipif(local_s3().name != "seaweedfs", reason="the moto fallback opens its one port only")
def test_seaweedfs_listens_only_on_the_ports_it_was_given_and_only_on_loopback(s3_service: Service) -> None:
    assert s3_service.process is not None
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(s3_service.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    # Every port on its command line (a port of 0 turns that server off)
    given = {int(value) for name, _, value in (flag.partition("=") for flag in s3_service.restart_args)
             if name.endswith((".port", ".port.grpc")) and int(value) > 0}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} == given
    assert s3_service.port in given and len(given) == 10
    assert seaweedfs.listening_ports(s3_service.process.pid) == listening
