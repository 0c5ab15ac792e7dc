"""Flower's configuration file, loaded by `celery -A tasks flower` run from the project root (Flower's
default --conf). Flower reads names defined here as its options; this file defines none, so the command
line and FLOWER_* variables keep deciding them. It only puts /metrics behind basic auth: see
tasks/flower_config.py."""

from tasks.flower_config import require_auth_on_metrics as _require_auth_on_metrics

_require_auth_on_metrics()
