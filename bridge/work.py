"""What a record asks the bridge for, by topic: a claim to score, a model to promote, a candidate to train."""

from __future__ import annotations

from bridge.claim import Claim, parse_claim
from bridge.dispatch import Record
from bridge.errors import ClaimRejected
from bridge.models import Training, parse_selected, parse_training
from settings import Settings
from tasks.model_store import Pointer

Work = Claim | Training | Pointer


def parse_record(record: Record, settings: Settings) -> Work | ClaimRejected:
    """The record as the work its topic asks for, or why it is rejected (pure: no I/O)."""
    try:
        if record.topic == settings.kafka_topic_model_selected:
            return parse_selected(record.value)
        if record.topic == settings.kafka_topic_model_training:
            return parse_training(record.value)
        return parse_claim(record.value, record.headers)
    except ClaimRejected as rejected:
        return rejected
