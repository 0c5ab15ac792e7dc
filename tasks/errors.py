"""One error tree for the inference core and its transports.

Each error carries a stable snake_case `code` (the HTTP error body and the Kafka DLQ header use it)
and the HTTP status a view maps it to. Transports translate; the core only raises.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Root of every error this project raises on purpose."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(InferenceError):
    """The caller's input cannot be scored: never retried, never a 5xx."""

    code = "invalid_request"
    status = 400


class UnscorableInput(InvalidInput):
    """Valid rows for which the model's output is not a finite number (an input far outside the range the
    model was fitted on): JSON cannot carry the answer, so there is none. 422: well formed, not scorable."""

    code = "non_finite_prediction"
    status = 422


def input_error(code: str, message: str) -> InvalidInput:
    """The InvalidInput a (code, message) pair names, as a micro-batch reports an item's failure."""
    return UnscorableInput(message) if code == UnscorableInput.code else InvalidInput(message, code=code)


class ModelUnavailable(InferenceError):
    """No promoted model, or it cannot be loaded: retry later."""

    code = "model_unavailable"
    status = 503


class ModelArtifactInvalid(ModelUnavailable):
    """A stored artifact failed its checksum or does not load: refused, the previous model stays."""

    code = "model_artifact_invalid"


class StorageUnavailable(InferenceError):
    """The object store did not answer: transient, retry with backoff."""

    code = "storage_unavailable"
    status = 503


class ObjectMissing(InferenceError):
    """The named object does not exist: permanent."""

    code = "object_missing"
    status = 404


class DeadlineExceeded(InferenceError):
    """The work's deadline passed before a result: it is dropped, never run late."""

    code = "deadline_exceeded"
    status = 504
