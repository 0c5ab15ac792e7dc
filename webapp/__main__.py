"""`python -m webapp`: the API on HOST:PORT, served by waitress."""

import gc
import logging
import sys

from settings import load_settings
from tasks.logs import configure_logging
from tasks.startup import announce, require_services
from webapp import create_app
from webapp.errors import backlog_refusal
from webapp.http import require_tested_waitress
from webapp.http.prefork import Supervisor, is_copy
from webapp.http.serve import serve
from webapp.parsing import backlog_deadline

log = logging.getLogger("webapp")


# Hand the GIL over every 0.5 ms instead of 5 ms: with HTTP_THREADS threads runnable at once, the I/O
# thread (which reads every request and answers /healthz) waits for the interpreter far less. Measured
# with 64 connections saturating /predict (perf `http`): 5 ms gave /healthz p99 ~200 ms; 1 ms, 32 ms;
# 0.5 ms, 27 ms and the best /predict throughput; 0.2 ms lost throughput to switching.
GIL_SWITCH_INTERVAL_S = 0.0005


def main() -> int:
    require_tested_waitress()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    settings = load_settings()
    if settings.http_processes > 1 and not is_copy():
        configure_logging("webapp", settings)
        return Supervisor(settings).run()
    configure_logging("webapp", settings, background=True)
    announce("webapp", settings)
    require_services(settings)
    app = create_app(settings)
    gateway = app.extensions["gateway"]
    if settings.wait_for_model:
        gateway.catalog.wait_until_loaded(settings.model_wait_timeout)

    # Everything built so far (libraries, the app, the model's description) lives as long as the process:
    # move it out of the garbage collector's reach, so that collections under load scan only request
    # garbage instead of pausing every thread while they walk hundreds of thousands of start-up objects.
    gc.collect()
    gc.freeze()

    def drain() -> None:
        gateway.draining = True

    code = serve(app, settings, on_drain=drain, refusal=backlog_refusal(settings.queue_maxsize),
                 deadline_of=backlog_deadline(settings.admission_ttl_ms, int(settings.inference_timeout * 1000)))
    gateway.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
