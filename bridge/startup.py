"""Start-up: wait for Kafka at most STARTUP_TIMEOUT_S (else exit non-zero with one line on stderr), then
create the topics that are missing."""

from __future__ import annotations

from kafka import KafkaAdminClient

from bridge.consumer import admin_client, ensure_topics
from settings import Settings
from tasks.startup import wait_for


def require_kafka(settings: Settings) -> None:
    admins: list[KafkaAdminClient] = []

    def probe() -> None:
        admin = admin_client(settings)
        admin.list_topics()
        admins.append(admin)

    wait_for(f"Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}", probe, settings.startup_timeout_s)
    admin = admins[-1]
    try:
        ensure_topics(settings, admin)
    finally:
        admin.close()
