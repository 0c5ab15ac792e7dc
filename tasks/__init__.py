"""Tasks: the inference core, the Celery app and its tasks, and what the API and the bridge share.

The Celery application for `celery -A tasks` lives in `tasks.celery` (built from the environment);
importing this package alone builds nothing.
"""
