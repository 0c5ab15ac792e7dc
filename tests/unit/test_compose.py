"""compose/: the docker compose stack agrees with the project, checked without Docker.

Docker is not available on development machines, so these tests read compose/docker-compose.yml, its
env file, the Dockerfile and the Prometheus and Grafana files, and hold them against the code: every
command exists, every variable is a setting, every long-running service has a healthcheck, published
ports do not clash, scalable services can be scaled, and the dashboard queries metrics that exist.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from settings import Settings
from tasks import metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"

#: Services that run the project's image; the rest (redis, kafka, minio, prometheus, grafana, locust) are upstream images.
PROJECT_SERVICES = {"api", "worker", "bridge", "flower", "model-init"}
#: Scaled with `--scale`: several replicas of each must be able to run side by side.
SCALABLE_SERVICES = {"worker", "bridge"}
#: Variables project containers may carry that are not settings: read by Python itself, not by the project.
NON_PROJECT_VARIABLES = {"PYTHONUNBUFFERED"}
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
CELERY_SUBCOMMANDS = {"worker", "flower", "beat", "inspect", "status"}


# ---------------------------------------------------------------------------------------------------
# Reading the files.


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def parse_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(values set, names listed commented out as `# NAME=`, meaning unset) of a compose env file."""
    values: dict[str, str] = {}
    unset: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        commented = re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line)
        if commented:
            unset.add(commented.group(1))
        elif line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values, unset


def env_files(service: dict[str, Any]) -> list[Path]:
    entries = service.get("env_file") or []
    entries = [entries] if isinstance(entries, str | dict) else entries
    paths = []
    for entry in entries:
        path = COMPOSE_DIR / (entry if isinstance(entry, str) else entry["path"])
        required = True if isinstance(entry, str) else entry.get("required", True)
        if required or path.exists():
            paths.append(path)
    return paths


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Every variable a container gets: its env files, then `environment` (which wins)."""
    merged: dict[str, str] = {}
    for path in env_files(service):
        merged.update(parse_env_file(path)[0])
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(item.partition("=")[::2] for item in declared)
    merged.update({name: str(value) for name, value in declared.items()})
    return merged


def command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def host_ports(service: dict[str, Any]) -> list[int]:
    """The host side of every published port (short syntax `[ip:]host:container[/proto]` or long syntax)."""
    published = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                published.append(int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2 and parts[-2]:
            published.append(int(parts[-2]))
    return published


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def one_shot_services() -> set[str]:
    """Services something waits on to *complete*: they exit, so they have no healthcheck."""
    return {name for spec in services().values() for name, condition in depends_on(spec).items()
            if condition == "service_completed_successfully"}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def exported_metric_names() -> set[str]:
    """The series names Prometheus sees for every metric declared in tasks/metrics.py."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names.update(value._name + suffix for suffix in suffixes[value._type])
    return names


def dashboard() -> dict[str, Any]:
    return json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "inference.json").read_text())


def dashboard_exprs() -> list[str]:
    panels = [panel for top in dashboard()["panels"] for panel in [top, *top.get("panels", [])]]
    return [target["expr"] for panel in panels for target in panel.get("targets", []) if target.get("expr")]


# ---------------------------------------------------------------------------------------------------
# Commands and the image.


def test_the_compose_file_defines_the_whole_stack() -> None:
    # Given the compose file, When it is parsed as YAML (anchors and merge keys resolved),
    # Then it has the services, the scale-out ones and the optional profiles the README names.
    found = services()
    assert set(found) >= PROJECT_SERVICES | {"redis", "kafka", "minio", "prometheus", "grafana", "locust"}
    assert found["prometheus"]["profiles"] == ["monitoring"] and found["grafana"]["profiles"] == ["monitoring"]
    assert found["locust"]["profiles"] == ["load"]
    assert all("profiles" not in found[name] for name in PROJECT_SERVICES | {"redis", "kafka", "minio"})


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_every_project_command_exists_in_the_project(name: str) -> None:
    # Given a service running the project's image, When its command is read,
    # Then `python -m <module>` names a module of the repository (a package needs __main__.py) and
    # `celery -A <app> <subcommand>` names a package whose celery.py defines `app`.
    argv = command(services()[name])
    assert argv, f"{name} has no command"
    if argv[:2] == ["python", "-m"]:
        parts = argv[2].split(".")
        for depth in range(1, len(parts)):
            assert (ROOT.joinpath(*parts[:depth]) / "__init__.py").is_file(), f"{name}: {'.'.join(parts[:depth])} is not a package"
        as_module = ROOT.joinpath(*parts).with_suffix(".py")
        as_package = ROOT.joinpath(*parts) / "__main__.py"
        assert as_module.is_file() or as_package.is_file(), f"{name}: python -m {argv[2]} finds nothing in the repository"
    elif argv[0] == "celery":
        app = argv[argv.index("-A") + 1]
        entry = ROOT / app / "celery.py"
        assert entry.is_file() and re.search(r"^app\s*=", entry.read_text(), re.M), f"{name}: celery -A {app} finds no app"
        subcommand = next(arg for arg in argv[argv.index("-A") + 2:] if not arg.startswith("-"))
        assert subcommand in CELERY_SUBCOMMANDS, f"{name}: celery {subcommand}?"
        if subcommand == "flower":
            assert re.search(r"^flower==", (ROOT / "requirements.txt").read_text(), re.M), "flower is not in requirements.txt"
    else:
        pytest.fail(f"{name}: {argv[0]} is neither python -m nor celery")


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_project_services_build_the_one_image(name: str) -> None:
    # Given a project service, When its build section is read, Then it builds compose/Dockerfile from the repository root.
    build = services()[name].get("build") or {}
    assert (COMPOSE_DIR / build.get("context", "")).resolve() == ROOT
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_dockerfile_installs_the_runtime_requirements_and_runs_as_non_root() -> None:
    # Given compose/Dockerfile, When its instructions are read, Then it starts from python:3.11-slim,
    # installs requirements.txt (not the dev or local stand-in requirements), copies every package a
    # compose command runs, and switches to a user other than root.
    assert DOCKERFILE.is_file()
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert any(re.match(r"COPY\s+requirements\.txt\s", line) for line in lines)
    assert any(line.startswith("RUN") and re.search(r"pip install .*-r requirements\.txt\b", line) for line in lines)
    assert not any(re.search(r"requirements-(dev|local)\.txt", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    copied = {source.rstrip("/") for line in lines if line.startswith("COPY ") for source in line.split()[1:-1] if not source.startswith("--")}
    for name in PROJECT_SERVICES:
        argv = command(services()[name])
        package = argv[2].split(".")[0] if argv[0] == "python" else argv[argv.index("-A") + 1]
        assert package in copied or "." in copied, f"the image lacks {package}/, which {name} runs"


def test_the_image_carries_flowers_configuration_file() -> None:
    # Given compose/Dockerfile, Then flowerconfig.py is copied into the working directory, where Flower reads it
    # (it puts /metrics behind FLOWER_BASIC_AUTH), and .dockerignore does not leave it out.
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert any(re.match(r"COPY\s+flowerconfig\.py\s+(\./|/app/)", line) for line in lines)
    assert "flowerconfig.py" not in (ROOT / ".dockerignore").read_text()


def test_the_dockerignore_keeps_the_virtualenv_and_local_secrets_out_of_the_build_context() -> None:
    # Given .dockerignore at the build context (the repository root), Then .venv, .git and compose/.env are excluded.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "compose/.env"} <= ignored


# ---------------------------------------------------------------------------------------------------
# Configuration.


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    # Given compose/.env.example, When its NAME=value lines (and commented-out `# NAME=` ones) are read,
    # Then every Settings field appears, and every name there is a setting.
    values, unset = parse_env_file(ENV_EXAMPLE)
    listed = set(values) | unset
    assert SETTINGS_VARIABLES - listed == set(), "missing from .env.example"
    assert listed - SETTINGS_VARIABLES == set(), "not settings"


def test_env_example_is_a_valid_configuration_pointing_at_the_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the values of compose/.env.example as the whole environment, When Settings parses them,
    # Then they validate, the processes listen on all interfaces, and Redis, S3 and Kafka are compose services.
    values, _ = parse_env_file(ENV_EXAMPLE)
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    names = set(services())
    assert settings.host == "0.0.0.0"
    assert urlsplit(settings.redis_url).hostname in names
    assert settings.s3_endpoint.rpartition(":")[0] in names
    assert {server.rpartition(":")[0] for server in settings.kafka_bootstrap_servers.split(",")} <= names


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_project_services_are_configured_only_through_settings(name: str) -> None:
    # Given a project service, When its env files and environment are merged,
    # Then every variable is a Settings field or one of the few whitelisted non-project variables.
    variables = set(environment(services()[name]))
    assert variables - SETTINGS_VARIABLES - NON_PROJECT_VARIABLES == set()
    assert variables >= SETTINGS_VARIABLES - parse_env_file(ENV_EXAMPLE)[1], f"{name} does not get compose/.env.example"
    assert environment(services()[name])["HOST"] == "0.0.0.0"


# ---------------------------------------------------------------------------------------------------
# Health, ordering, ports and scaling.


def test_every_long_running_service_has_a_healthcheck() -> None:
    # Given every service but the one-shot ones (those waited on with service_completed_successfully),
    # Then each has a healthcheck with a test command that is not disabled.
    shots = one_shot_services()
    assert shots, "model-init should be waited on to complete"
    for name, spec in services().items():
        if name in shots:
            assert spec.get("restart", "no") == "no", f"{name} runs once: it must not restart"
            continue
        check = spec.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name, probe", [
    ("api", "/readyz"), ("bridge", "/readyz"), ("worker", "WORKER_METRICS_PORT"), ("flower", "/healthcheck"),
    ("redis", "ping"), ("kafka", "--bootstrap-server"), ("minio", "/minio/health/ready"),
])
def test_healthchecks_probe_real_readiness(name: str, probe: str) -> None:
    # Given a service, When its healthcheck is read, Then it asks the process itself for readiness, not just a port.
    assert probe in healthcheck_text(services()[name])


def test_bridge_readiness_is_probed_on_its_metrics_port() -> None:
    # Given the bridge's healthcheck, Then it reads BRIDGE_METRICS_PORT (where /readyz lives), not PORT.
    assert "BRIDGE_METRICS_PORT" in healthcheck_text(services()["bridge"])


def test_published_host_ports_do_not_clash() -> None:
    # Given every service with every profile enabled, When the host side of each published port is collected,
    # Then no host port is published twice.
    seen: dict[int, str] = {}
    for name, spec in services().items():
        for port in host_ports(spec):
            assert port not in seen, f"host port {port} is published by {seen[port]} and {name}"
            seen[port] = name
    assert {8000, 5555} <= set(seen)


@pytest.mark.parametrize("name", sorted(SCALABLE_SERVICES))
def test_scalable_services_have_no_fixed_name_or_host_port(name: str) -> None:
    # Given a service scaled with --scale, Then it sets no container_name, no hostname (Celery node names
    # come from it) and publishes no fixed host port: each replica would clash with the others.
    spec = services()[name]
    assert "container_name" not in spec and "hostname" not in spec
    assert host_ports(spec) == []


def test_depends_on_names_existing_services_with_valid_conditions() -> None:
    # Given every depends_on entry, Then it names an existing service with a known condition;
    # service_healthy waits on a service that has a healthcheck, and a service outside every profile
    # never depends on one inside a profile (compose would refuse to start it).
    found = services()
    for name, spec in found.items():
        for target, condition in depends_on(spec).items():
            assert target in found, f"{name} depends on unknown {target}"
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert found[target].get("healthcheck"), f"{name} waits for {target} to be healthy, which has no healthcheck"
            if not spec.get("profiles"):
                assert not found[target].get("profiles"), f"{name} depends on {target}, which only runs in a profile"


@pytest.mark.parametrize("name, needs", [
    ("api", {"redis": "service_healthy", "minio": "service_healthy", "model-init": "service_completed_successfully"}),
    ("worker", {"redis": "service_healthy", "minio": "service_healthy", "model-init": "service_completed_successfully"}),
    ("bridge", {"redis": "service_healthy", "minio": "service_healthy", "kafka": "service_healthy",
                "model-init": "service_completed_successfully"}),
    ("model-init", {"minio": "service_healthy"}),
    ("flower", {"redis": "service_healthy"}),
])
def test_project_services_wait_for_what_they_need(name: str, needs: dict[str, str]) -> None:
    # Given a project service, Then it starts only once the services it requires at start-up are healthy
    # and the demo model is in the store.
    assert depends_on(services()[name]).items() >= needs.items()


@pytest.mark.parametrize("name", ["api", "worker", "bridge"])
def test_draining_processes_get_their_drain_timeout_before_sigkill(name: str) -> None:
    # Given DRAIN_TIMEOUT_S from .env.example, Then stop_grace_period leaves the process that long to drain.
    grace = str(services()[name].get("stop_grace_period", "10s"))
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert match, grace
    seconds = int(match.group(1) or 0) * 60 + int(match.group(2) or 0)
    assert seconds > float(parse_env_file(ENV_EXAMPLE)[0]["DRAIN_TIMEOUT_S"])


def test_bind_mounts_exist() -> None:
    # Given every relative bind mount (./ or ../), Then its source exists next to the compose file.
    for name, spec in services().items():
        for volume in spec.get("volumes") or []:
            source = volume if isinstance(volume, str) else volume.get("source", "")
            source = source.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts missing {source}"


def test_locust_runs_the_perf_locustfile_against_the_api() -> None:
    # Given the load profile's locust service, Then it mounts perf/ where its -f path points and targets the api service.
    spec = services()["locust"]
    argv = command(spec)
    locustfile = Path(spec["working_dir"]) / argv[argv.index("-f") + 1]
    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in spec["volumes"])}
    mounted = [target for target in mounts if Path(target) in locustfile.parents]
    assert mounted and (COMPOSE_DIR / mounts[mounted[0]]).resolve() == ROOT / "perf"
    assert locustfile.name == "locustfile.py"
    assert urlsplit(argv[argv.index("--host") + 1]).hostname == "api"


# ---------------------------------------------------------------------------------------------------
# Monitoring.


def test_prometheus_scrapes_every_process_on_its_configured_port() -> None:
    # Given prometheus.yml and .env.example, Then the API, every worker and every bridge replica are scraped
    # by service name on PORT, WORKER_METRICS_PORT and BRIDGE_METRICS_PORT, and the API publishes that PORT.
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    values, _ = parse_env_file(ENV_EXAMPLE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = set()
    for job in jobs.values():
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    assert f"api:{values['PORT']}" in targets
    assert f"worker:{values['WORKER_METRICS_PORT']}" in targets
    assert f"bridge:{values['BRIDGE_METRICS_PORT']}" in targets
    assert {target.rpartition(":")[0] for target in targets} <= set(services())
    api_ports = [str(port).split(":")[-1] for port in services()["api"]["ports"]]
    assert values["PORT"] in api_ports


def test_the_dashboard_queries_only_metrics_defined_in_tasks_metrics() -> None:
    # Given the Grafana dashboard, When every metric name in its queries is extracted,
    # Then each is a series exported by tasks/metrics.py (no typo, no renamed metric).
    known = exported_metric_names()
    exprs = dashboard_exprs()
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\b(?:inference|bridge)_[a-z0-9_]+\b", expr)}
    assert used - known == set()


@pytest.mark.parametrize("metric", [
    "inference_queue_depth", "inference_admission_total", "inference_http_request_duration_seconds_bucket",
    "inference_batch_size_bucket", "inference_expired_total", "bridge_claims_in_flight", "bridge_consumer_paused",
    "bridge_records_total", "bridge_committed_offset", "inference_model_loaded", "inference_queue_wait_seconds_bucket",
    "inference_backlog", "bridge_end_offset", "bridge_consumer_lag", "bridge_commits_total", "bridge_dead_lettered_total",
])
def test_the_dashboard_covers_each_operator_question(metric: str) -> None:
    # Given the dashboard, Then queue depth, admissions, latency, batch sizes, expiries, queue wait, the
    # autoscaling backlog, the bridge's flow, offsets, lag, commits and DLQ, and the model version per worker
    # each have a panel.
    assert any(re.search(rf"\b{metric}\b", expr) for expr in dashboard_exprs())


def test_grafana_provisions_the_prometheus_datasource_and_the_mounted_dashboards() -> None:
    # Given Grafana's provisioning files, Then the datasource the dashboard uses is provisioned with the
    # prometheus service's URL, and the dashboards provider reads the folder the compose file mounts.
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {source["uid"]: source for source in datasources}
    used = {panel["datasource"]["uid"] for panel in dashboard()["panels"] if "datasource" in panel}
    assert used <= set(uids)
    assert all(urlsplit(uids[uid]["url"]).hostname in services() for uid in used)
    provider_paths = {provider["options"]["path"] for path in (provisioning / "dashboards").glob("*.yml")
                      for provider in yaml.safe_load(path.read_text())["providers"]}
    mounts = dict(volume.split(":")[:2] for volume in services()["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] in provider_paths
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
