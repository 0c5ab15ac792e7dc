"""`python -m bridge`: load settings, wait for Redis, S3 and Kafka, create missing topics, run the bridge."""

import sys

from bridge.http import ProbeServer
from bridge.loop import Bridge
from bridge.startup import require_kafka
from settings import load_settings
from tasks import metrics
from tasks.logs import configure_logging
from tasks.startup import announce, require_services


def main() -> int:
    settings = load_settings()
    configure_logging("bridge", settings)
    announce("bridge", settings)
    require_services(settings)
    require_kafka(settings)
    bridge = Bridge(settings)
    bridge.install_signals()
    probes = ProbeServer(settings.host, settings.bridge_metrics_port, bridge.readiness, metrics.registry(metrics.BRIDGE)).start()
    try:
        return bridge.run()
    finally:
        probes.stop()


if __name__ == "__main__":
    sys.exit(main())
