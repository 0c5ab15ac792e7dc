"""The one settings object: every variable of docs/interface.md, parsed and validated once per process.

Nothing else in the project reads the environment. Units are in the field names (`_ms`, `_s`), except
where docs/interface.md fixes a name without one (`INFERENCE_TIMEOUT`, `MODEL_WAIT_TIMEOUT`: seconds).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Redis: Celery broker, result backend and cache.
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_queue: str = Field("inference", min_length=1)
    celery_batch_queue: str = Field("inference-batch", min_length=1)

    # Kafka.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = Field("batch-forecasting-v2", min_length=1)
    kafka_topic_claims: str = Field("inference-data", min_length=1)
    kafka_topic_model_selected: str = Field("model-selected", min_length=1)
    kafka_topic_model_training: str = Field("model-training", min_length=1)
    kafka_topic_dlq: str = Field("inference-data.dlq", min_length=1)
    kafka_topic_partitions: int = Field(4, ge=1)
    kafka_replication_factor: int = Field(1, ge=1)

    # Object storage (MinIO or any S3-compatible endpoint).
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("minioadmin")
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_secure: bool = False
    bucket_processed: str = "processed-data"
    bucket_mlflow: str = "mlflow"
    bucket_promotion: str = "model-promotion"
    bucket_logs: str = "inference-logs"

    # Admission and backpressure.
    use_bounded_queue: bool = True
    queue_maxsize: int = Field(512, ge=1)
    queue_workers: int = Field(2, ge=1)
    inference_timeout: float = Field(15.0, gt=0)
    enable_ttl: bool = True
    default_ttl_ms: int = Field(15000, ge=1)
    use_manual_commit: bool = True
    fetch_max_wait_ms: int = Field(50, ge=0)
    max_poll_records: int = Field(64, ge=1)
    pause_threshold_pct: int = Field(80, ge=1, le=100)
    resume_threshold_pct: int = Field(50, ge=0, le=99)

    # Inference.
    enable_microbatch: bool = True
    batch_size: int = Field(32, ge=1)
    batch_timeout_ms: int = Field(25, ge=0)
    wait_for_model: bool = True
    model_wait_timeout: float = Field(5.0, ge=0)
    inference_prewarm: bool = True

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Request threads mostly wait: each admitted /predict holds one while its row gathers into a batch and the
    # batch's round trip runs (25-40 ms under load), so the threads cap the rate at threads / wait. 64 serve
    # ~2,000 req/s that way; the CPU they use is what the requests need, not what the threads cost.
    http_threads: int = Field(64, ge=1)
    http_processes: int = Field(1, ge=1, le=64)
    http_backlog_wait_ms: int = Field(200, ge=0)
    http_keepalive: int = Field(60, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=64)
    max_instances: int = Field(1024, ge=1)
    enable_test_endpoints: bool = False
    admin_token: SecretStr | None = None

    # Lifecycle.
    drain_timeout_s: float = Field(30.0, ge=0)
    startup_timeout_s: float = Field(30.0, ge=0)

    # Cache, metrics, monitoring, logs.
    cache_mode: Literal["busy", "always", "off"] = "busy"
    cache_ttl_s: int = Field(300, ge=1)
    bridge_metrics_port: int = Field(9101, ge=0, le=65535)
    worker_metrics_port: int = Field(9102, ge=0, le=65535)
    flower_basic_auth: SecretStr | None = None
    log_format: Literal["json", "text"] = "json"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if "://" in value or "/" in value or not value:
            raise ValueError("must be host:port, without a scheme or a path")
        return value

    @field_validator("cache_mode", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("admin_token", "flower_basic_auth", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, value: SecretStr | None) -> SecretStr | None:
        # Flower splits the value at commas into user:password pairs and compares each whole, so a comma in
        # the password would make its tail a credential of its own: every part must be user:password.
        if value is not None and not all(user and password for user, _, password
                                         in (part.partition(":") for part in value.get_secret_value().split(","))):
            raise ValueError("must be user:password (several separated by commas; no comma in a password)")
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> Settings:
        if self.resume_threshold_pct >= self.pause_threshold_pct:
            raise ValueError(
                "RESUME_THRESHOLD_PCT must be below PAUSE_THRESHOLD_PCT "
                f"(got {self.resume_threshold_pct} >= {self.pause_threshold_pct})"
            )
        return self

    @property
    def admission_ttl_ms(self) -> int:
        """The deadline given to HTTP work that brings none, never longer than a caller waits."""
        return min(self.default_ttl_ms, int(self.inference_timeout * 1000))

    def masked(self) -> dict[str, object]:
        """The effective configuration for the start-up log: secrets masked, credentials out of URLs."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, str) and "@" in value and "://" in value:
                parts = urlsplit(value)
                value = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
            shown[name.upper()] = value
        return shown
