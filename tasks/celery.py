"""Celery entrypoint: `celery -A tasks worker` and `celery -A tasks flower` find `app` here."""

from settings import load_settings
from tasks import predict  # noqa: F401 - registers the tasks
from tasks import worker
from tasks.celery_app import create_celery

app = create_celery(load_settings())
worker.install(app)
