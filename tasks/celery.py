"""Celery entrypoint: `celery -A tasks worker` and `celery -A tasks flower` find `app` here."""

from tasks import worker_metrics

worker_metrics.prepare()  # before any metric exists: pool processes write theirs for the node to merge

from settings import load_settings  # noqa: E402
from tasks import claim_scoring, predict, training, worker  # noqa: E402,F401 - the task modules register their tasks
from tasks.celery_config import create_celery  # noqa: E402

app = create_celery(load_settings())
worker.install(app)
worker_metrics.install(app)
