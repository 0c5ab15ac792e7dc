"""`make run`: the whole stack in the foreground, logs interleaved and labelled; Ctrl-C stops all of it.

Starts a local Redis, S3-compatible server and Kafka-protocol broker (Tansu) only where nothing answers at
REDIS_URL, S3_ENDPOINT and KAFKA_BOOTSTRAP_SERVERS (and only on loopback addresses), stores and promotes the
demo model when the model store is empty, then runs the worker, the API, the bridge and Flower. Against
existing services, set those variables and nothing local is started for them.

The S3 server is SeaweedFS where its wheel installs (data kept in .stack/s3 from one run to the next), moto's
mock elsewhere or with LOCAL_S3=moto (in memory); the first lines of the output say which, and on which ports.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import honcho.manager
from honcho.manager import Manager

from devtools import seaweedfs
from devtools.services import BIN, local_s3, port_open, redis_binary, s3_server_command, tansu_binary
from settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
STATE = ROOT / ".stack"


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or address), int(port or default_port)


class Local(NamedTuple):
    """A local service to run: its command, its environment (None: ours), and a line for the start-up log."""

    command: str
    env: dict[str, str] | None = None
    note: str = ""


def infrastructure(settings: Settings) -> dict[str, Local]:
    """The local services that are missing; an unreachable remote service is an error."""
    commands: dict[str, Local] = {}
    redis_url = urlsplit(settings.redis_url)
    redis_host, redis_port = redis_url.hostname or "127.0.0.1", redis_url.port or 6379
    if not port_open(redis_host, redis_port):
        _local_only("REDIS_URL", redis_host)
        workdir = STATE / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        commands["redis"] = Local(shlex.join([redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no", "--dir", str(workdir)]),
                                  note=f"Redis 127.0.0.1:{redis_port}")
    s3_host, s3_port = _host_port(settings.s3_endpoint, 9000)
    if not port_open(s3_host, s3_port):
        _local_only("S3_ENDPOINT", s3_host)
        commands["s3"] = s3_server(settings, s3_port)
    kafka_host, kafka_port = _host_port(settings.kafka_bootstrap_servers.split(",")[0], 9092)
    if not port_open(kafka_host, kafka_port):
        _local_only("KAFKA_BOOTSTRAP_SERVERS", kafka_host)
        url = f"tcp://127.0.0.1:{kafka_port}"
        commands["kafka"] = Local(shlex.join([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                                              url, "--storage-engine", "memory://tansu/"]),
                                  note=f"Kafka 127.0.0.1:{kafka_port}: Tansu, in memory")
    return commands


def s3_server(settings: Settings, port: int) -> Local:
    """The local S3 server on 127.0.0.1:`port`, accepting S3_ACCESS_KEY / S3_SECRET_KEY. SeaweedFS's other
    ports (master, volume server, filer, admin server, and their gRPC ports) are free ones chosen for this run."""
    choice = local_s3()
    weed = seaweedfs.binary(BIN)
    if choice.name == "moto" or weed is None:
        return Local(shlex.join(s3_server_command(port)), note=f"S3 127.0.0.1:{port}: {choice.label}, in memory")
    data_dir = STATE / "s3"
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = seaweedfs.choose_ports(port)
    env = seaweedfs.environment(dict(os.environ), settings.s3_access_key.get_secret_value(),
                                settings.s3_secret_key.get_secret_value())
    return Local(shlex.join(seaweedfs.command(weed, data_dir, ports)), env,
                 f"S3 127.0.0.1:{port}: {choice.label}, data in {data_dir.relative_to(ROOT)}; "
                 f"ports (HTTP/gRPC) {ports.describe()}")


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
    for name, local in infrastructure(settings).items():
        # The stand-ins log every request they serve, or much of their own chatter; their start and stop still show.
        manager.add_process(name, local.command, cwd=str(ROOT), quiet=True, env=local.env)
        print(f"local {local.note}", flush=True)
    for name, command in applications(settings).items():
        manager.add_process(name, command, cwd=str(ROOT))
    print(f"API http://{settings.host}:{settings.port}  Flower http://127.0.0.1:5555  (Ctrl-C stops everything)", flush=True)
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
