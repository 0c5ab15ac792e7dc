"""Celery entrypoint: `celery -A tasks worker` and `celery -A tasks flower` find `app` here."""

from settings import load_settings
from tasks import claims, predict, training, worker  # noqa: F401 - claims, predict and training register tasks
from tasks.celery_app import create_celery

app = create_celery(load_settings())
worker.install(app)
