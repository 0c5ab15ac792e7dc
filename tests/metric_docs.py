"""The README's metrics table, read back: which process serves which metric, as documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tasks import metrics

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `((?:inference|bridge)_[a-z0-9_]+)` \| (\w+) \|[^|]*\| ([^|]+) \|", re.MULTILINE)
_PROCESSES = {"API": metrics.API, "worker": metrics.WORKER, "bridge": metrics.BRIDGE}


def documented() -> dict[str, set[str]]:
    """Series names per process, from the README's metrics table."""
    found: dict[str, set[str]] = {process: set() for process in _PROCESSES.values()}
    for name, _kind, served_by in _ROW.findall(README.read_text()):
        for process in served_by.split(","):
            found[_PROCESSES[process.strip()]].add(name)
    return found


def documented_types() -> dict[str, str]:
    return {name: kind for name, kind, _ in _ROW.findall(README.read_text())}


def exported() -> dict[str, set[str]]:
    """Series names per process, from tasks.metrics.EXPORTED."""
    return {process: {metrics.series_name(metric) for metric in served} for process, served in metrics.EXPORTED.items()}


def ours(text: str) -> dict[str, Any]:
    """The project's metric families in a /metrics response that have at least one sample, by family name
    (the text parser reads a counter's or histogram's `_created` samples as a family of their own: left out)."""
    return {family.name: family for family in text_string_to_metric_families(text)
            if family.name.startswith(("inference_", "bridge_")) and not family.name.endswith("_created") and family.samples}
