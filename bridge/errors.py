"""The bridge's errors: what the poll loop does with each is decided by its type.

- `ClaimRejected`: this record cannot be processed; it goes to the DLQ with `code` and counts as done.
- `ServiceUnavailable`: the object store or Redis did not answer while a record was acted on; the record is
  held and read again after RETRY_WAIT_S, never dead-lettered.
- `KafkaUnavailable`: the broker did not answer; retried with an interruptible wait, fatal at start-up.
- `CommitFailed`: a commit was refused (usually a rebalance in progress); the next commit retries.

Shutting down is not an error: a signal sets the loop's stop event, and the loop drains (loop.py).
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of the errors the bridge raises on purpose."""


class ClaimRejected(BridgeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ServiceUnavailable(BridgeError):
    pass


class KafkaUnavailable(BridgeError):
    pass


class CommitFailed(BridgeError):
    pass
