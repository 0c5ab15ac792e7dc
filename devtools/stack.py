"""`make run`: the whole stack in the foreground, logs interleaved and labelled; Ctrl-C stops all of it.

Starts a local Redis, S3-compatible server (moto) and Kafka-protocol broker (Tansu) only where nothing
answers at REDIS_URL, S3_ENDPOINT and KAFKA_BOOTSTRAP_SERVERS (and only on loopback addresses), stores
and promotes the demo model when the model store is empty, then runs the worker, the API, the bridge
and Flower. Against existing services, set those variables and nothing local is started for them.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import honcho.manager
from honcho.manager import Manager

from devtools.services import BIN, port_open, redis_binary, s3_server_command, tansu_binary
from settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
STATE = ROOT / ".stack"


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or address), int(port or default_port)


def infrastructure(settings: Settings) -> dict[str, str]:
    """Commands for the local services that are missing; an unreachable remote service is an error."""
    commands: dict[str, str] = {}
    redis_url = urlsplit(settings.redis_url)
    redis_host, redis_port = redis_url.hostname or "127.0.0.1", redis_url.port or 6379
    if not port_open(redis_host, redis_port):
        _local_only("REDIS_URL", redis_host)
        workdir = STATE / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        commands["redis"] = shlex.join([redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no", "--dir", str(workdir)])
    s3_host, s3_port = _host_port(settings.s3_endpoint, 9000)
    if not port_open(s3_host, s3_port):
        _local_only("S3_ENDPOINT", s3_host)
        commands["s3"] = shlex.join(s3_server_command(s3_port))
    kafka_host, kafka_port = _host_port(settings.kafka_bootstrap_servers.split(",")[0], 9092)
    if not port_open(kafka_host, kafka_port):
        _local_only("KAFKA_BOOTSTRAP_SERVERS", kafka_host)
        url = f"tcp://127.0.0.1:{kafka_port}"
        commands["kafka"] = shlex.join([tansu_binary(), "broker", "--listener-url", url,
                                        "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"])
    return commands


def _local_only(variable: str, host: str) -> None:
    if host not in LOOPBACK:
        sys.exit(f"{variable} points at {host}, which does not answer; start it or unset {variable} for a local one")


def applications(settings: Settings) -> dict[str, str]:
    python = shlex.quote(sys.executable)
    celery = shlex.quote(str(BIN / "celery"))
    flower = f"{celery} -A tasks flower --address=127.0.0.1 --port=5555"
    if settings.flower_basic_auth:
        flower += " --basic-auth=\"$FLOWER_BASIC_AUTH\""
    return {
        # The demo model goes in first, when the store is empty; the worker then finds it at start-up.
        "worker": f"{python} -m tasks.demo_model --if-empty && exec {celery} -A tasks worker -E --loglevel=INFO",
        "api": f"exec {python} -m webapp",
        "bridge": f"exec {python} -m bridge",
        "flower": f"exec {flower}",
    }


def main() -> int:
    settings = load_settings()
    # Let every process finish its own drain (DRAIN_TIMEOUT_S) before the runner kills it.
    honcho.manager.KILL_WAIT = int(settings.drain_timeout_s) + 5
    manager = Manager()
    for name, command in infrastructure(settings).items():
        # The stand-ins log every request they serve; their start and stop still show.
        manager.add_process(name, command, cwd=str(ROOT), quiet=True)
    for name, command in applications(settings).items():
        manager.add_process(name, command, cwd=str(ROOT))
    print(f"API http://{settings.host}:{settings.port}  Flower http://127.0.0.1:5555  (Ctrl-C stops everything)", flush=True)
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
