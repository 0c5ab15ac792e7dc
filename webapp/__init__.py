"""The HTTP API: a Flask app factory over the inference gateway."""

from __future__ import annotations

from flask import Flask

from settings import Settings, load_settings
from webapp.downloads import downloads
from webapp.errors import register_error_handlers
from webapp.gateway import Gateway
from webapp.publish import publish
from webapp.scrape import ScrapedMetrics
from webapp.views import api

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, start: bool = True) -> Flask:
    """Build the app. `settings` defaults to the environment; `start=False` leaves the background
    threads (result collector, model watcher) stopped, for tests of the request layer alone."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)  # an API: no /static route beside those /openapi.json lists
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    gateway = Gateway(settings)
    app.extensions["gateway"] = gateway
    app.extensions["metrics"] = ScrapedMetrics(gateway)
    app.register_blueprint(api)
    app.register_blueprint(publish)
    app.register_blueprint(downloads)
    register_error_handlers(app)
    if start:
        gateway.start()
    return app
