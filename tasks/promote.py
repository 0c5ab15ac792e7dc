"""`python -m tasks.promote MODEL_NAME VERSION`: promote a stored candidate.

Checks that the artifact loads, writes the pointer in BUCKET_PROMOTION, wakes the watching workers and
APIs, and publishes a `model-selected` record so that every consumer hears of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import redis

from settings import load_settings
from tasks.errors import InferenceError
from tasks.logs import configure_logging, log_event
from tasks.model_store import ModelStore
from tasks.serving import announce_promotion
from tasks.startup import require_services
from tasks.storage import ObjectStore

log = logging.getLogger("tasks.promote")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_name")
    parser.add_argument("version")
    parser.add_argument("--no-kafka", action="store_true", help="do not publish the model-selected record")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging("worker", settings)
    require_services(settings)
    models = ModelStore(settings, ObjectStore(settings))
    pointer = models.stored(args.model_name, args.version)
    if pointer is None:
        print(f"no stored model {args.model_name} {args.version} in {settings.bucket_mlflow}", file=sys.stderr)
        return 1
    try:
        models.promote(pointer)
    except InferenceError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    announce_promotion(redis.Redis.from_url(settings.redis_url), pointer)
    if not args.no_kafka:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, max_block_ms=10_000)
        producer.send(settings.kafka_topic_model_selected, key=pointer.model_name.encode(),
                      value=json.dumps(pointer.as_json()).encode()).get(timeout=10)
        producer.close(timeout=5)
    log_event(log, "model_promoted", model_name=pointer.model_name, version=pointer.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
