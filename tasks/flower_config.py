"""Flower's own configuration for `celery -A tasks flower`, applied by flowerconfig.py at the project root
(the file Flower loads from its working directory by default).

With basic auth on (FLOWER_BASIC_AUTH or --basic-auth), Flower 2.2.0 checks the credentials on every page
and API call but serves /metrics and /healthcheck to anyone (its docs list both as exempt), and has no
option to change that. /metrics names every task, worker and queue and their counts, so it goes behind the
same check here: its route is given a subclass of Flower's own handler guarded by tornado's
`@authenticated`, the decorator all of Flower's other handlers use. Without basic auth nothing changes.
/healthcheck stays open: it answers "OK" and nothing else, and container health checks call it without
credentials.

Flower internals touched (tested with Flower 2.2.0 only; another version refuses to start):
- `flower.urls.handlers`, the route list `flower.app.Flower` builds its application from when it starts
  (after this file ran): the /metrics entry is replaced in place, since `flower.app` holds the same list.
- `flower.views.monitor.Metrics`: subclassed, not changed.
"""

from __future__ import annotations

from typing import Any

TESTED_FLOWER = "2.2.0"
METRICS_ROUTE = r"/metrics"


def require_auth_on_metrics() -> None:
    import flower
    from flower import urls
    from flower.views.monitor import Metrics
    from tornado import web

    if flower.__version__ != TESTED_FLOWER:
        raise SystemExit(f"tasks/flower_config.py was tested with Flower {TESTED_FLOWER}, not {flower.__version__}: "
                         "check that /metrics is still served without authentication, then update TESTED_FLOWER")

    class AuthenticatedMetrics(Metrics):  # type: ignore[misc]
        @web.authenticated  # type: ignore[misc]
        async def get(self) -> None:
            await super().get()

    routes: list[Any] = urls.handlers
    found = [index for index, route in enumerate(routes) if isinstance(route, tuple) and route[0] == METRICS_ROUTE]
    if len(found) != 1 or routes[found[0]][1] not in (Metrics, AuthenticatedMetrics):
        raise SystemExit(f"Flower {flower.__version__} has no single {METRICS_ROUTE} route to put behind basic auth")
    routes[found[0]] = (METRICS_ROUTE, AuthenticatedMetrics)
