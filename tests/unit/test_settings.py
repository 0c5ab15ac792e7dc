"""Settings: defaults from docs/interface.md, strict parsing, one clear line naming a bad variable."""

import pytest

from settings import ConfigurationError, Settings, load_settings


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.celery_queue, settings.celery_batch_queue) == ("inference", "inference-batch")
    assert (settings.queue_maxsize, settings.queue_workers, settings.default_ttl_ms) == (512, 2, 15000)
    assert (settings.pause_threshold_pct, settings.resume_threshold_pct) == (80, 50)
    assert (settings.batch_size, settings.batch_timeout_ms, settings.max_body_bytes) == (32, 25, 1_048_576)
    assert settings.cache_mode == "busy" and settings.log_format == "json" and settings.admin_token is None


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("true", True), ("0", False), ("no", False), ("FALSE", False)])
def test_booleans_accept_the_contract_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("ENABLE_TTL", raw)
    assert Settings().enable_ttl is expected


@pytest.mark.parametrize("name, value", [
    ("QUEUE_MAXSIZE", "many"), ("QUEUE_MAXSIZE", "0"), ("ENABLE_TTL", "maybe"), ("CACHE_MODE", "sometimes"),
    ("REDIS_URL", "http://localhost"), ("S3_ENDPOINT", "http://minio:9000"), ("PORT", "70000"),
    ("LOG_FORMAT", "xml"), ("FLOWER_BASIC_AUTH", "nocolon"), ("FLOWER_BASIC_AUTH", "admin:pass,word"),
    ("FLOWER_BASIC_AUTH", ":password"), ("FLOWER_BASIC_AUTH", "admin:"),
])
def test_an_invalid_value_exits_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err


def test_resume_threshold_must_be_below_pause(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PAUSE_THRESHOLD_PCT", "50")
    monkeypatch.setenv("RESUME_THRESHOLD_PCT", "60")
    with pytest.raises(ConfigurationError):
        load_settings()
    assert "RESUME_THRESHOLD_PCT" in capsys.readouterr().err


def test_masked_configuration_hides_secrets_and_url_credentials() -> None:
    settings = Settings(redis_url="redis://:hunter2@redis:6379/0", s3_secret_key="s3cret", admin_token="tok")
    shown = str(settings.masked())
    assert "hunter2" not in shown and "s3cret" not in shown and "tok'" not in shown
    assert settings.masked()["REDIS_URL"] == "redis://***@redis:6379/0"


def test_empty_secrets_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", " ")
    settings = Settings()
    assert settings.admin_token is None and settings.flower_basic_auth is None
