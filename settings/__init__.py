"""Configuration: one typed object, built once per process from the environment."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from settings.config import Settings

__all__ = ["ConfigurationError", "Settings", "load_settings"]


class ConfigurationError(SystemExit):
    """Raised at start-up for an invalid variable: exits non-zero with one line naming it."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe(error: ValidationError) -> str:
    """One line per bad variable, each naming it as it is spelled in the environment."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        name = "_".join(str(part) for part in item["loc"]).upper()
        lines.append(f"{name}: {message}" if name else message)
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Parse and validate the environment (plus overrides); exit with a clear line if it is invalid."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        message = f"invalid configuration: {describe(error)}"
        print(message, file=sys.stderr, flush=True)
        raise ConfigurationError(message) from None
