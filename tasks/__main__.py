"""`python -m tasks [celery worker options]`: a worker on both lanes, interactive first."""

import sys

from tasks.celery import app

if __name__ == "__main__":
    app.worker_main(["worker", "--loglevel=INFO", *sys.argv[1:]])
