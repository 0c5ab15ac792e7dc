"""Several API processes on one port (HTTP_PROCESSES=2, webapp/http/prefork.py), as real processes over the
test Redis and S3 with a real worker: both copies serve, /metrics on the port adds up what both did, a
copy that dies is replaced while the other keeps answering, and SIGTERM drains both and exits 0."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from devtools.processes import ManagedProcess, start_api
from devtools.services import free_port
from tests.e2e.bridge_support import wait_until
from tests.e2e.test_lifecycle import ROW
from tests.e2e.test_metrics import scrape, value

pytestmark = pytest.mark.e2e

PROCESSES = 2


def predict_for(url: str, seconds: float, clients: int = 8, at_least: int = 0) -> Counter[int | str]:
    """`clients` threads sending /predict for `seconds`, and on until `at_least` answers came back however slow the
    machine (for 30 s more at most), each on a new connection every time (so the kernel spreads them over the
    copies); what they got, by status or error type."""
    outcomes: Counter[int | str] = Counter()
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def more() -> bool:
        now = time.monotonic()
        with lock:
            answered = sum(outcomes.values())
        return now < until or (answered < at_least and now < until + 30)

    def client() -> None:
        while more():
            try:
                status: int | str = requests.post(f"{url}/predict", json={"features": ROW}, timeout=(2, 20),
                                                  headers={"Connection": "close"}).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            with lock:
                outcomes[status] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return outcomes


def copies(api: ManagedProcess) -> set[int]:
    return {event["pid"] for event in api.events("http_listening")}


def stop_supervisor(api: ManagedProcess, how: str) -> None:
    if how == "sigterm":
        api.signal(signal.SIGTERM)
    else:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group, the copies included
        os.killpg(os.getpgid(api.pid), signal.SIGINT)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_two_processes_share_the_port_and_their_metrics_then_drain(
        module_env: dict[str, str], worker: ManagedProcess, log_dir: Path, how: str) -> None:
    # Given an API started with HTTP_PROCESSES=2 (no response cache, so every 200 was admitted)
    api = start_api({**module_env, "HTTP_PROCESSES": str(PROCESSES), "CACHE_MODE": "off"}, log_dir, free_port())
    try:
        api.wait_for_event("http_listening", timeout_s=60, count=PROCESSES)
        before = value(scrape(api.url), "inference_admission_total", outcome="accepted")
        # When clients send /predict on fresh connections for a few seconds
        outcomes = predict_for(api.url, 4, at_least=20)
        # Then every request is answered 200, and both copies admitted some of them
        enqueued_by = Counter(event["pid"] for event in api.events("queue_enqueued"))
        # And /metrics, whichever copy answers it, counts the admissions of both
        scraped = [value(scrape(api.url), "inference_admission_total", outcome="accepted") - before for _ in range(6)]
        print(f"\nHTTP_PROCESSES=2: answers {dict(outcomes)}; admitted per copy {dict(enqueued_by)}; "
              f"accepted on /metrics (6 scrapes) {scraped}")
        assert set(outcomes) == {200} and outcomes[200] >= 20, dict(outcomes)
        assert set(enqueued_by) == copies(api) and len(enqueued_by) == PROCESSES, (dict(enqueued_by), copies(api))
        assert scraped == [outcomes[200]] * len(scraped)
        # When the supervisor receives SIGTERM, or a Ctrl-C reaches the whole process group
        stop_supervisor(api, how)
        code = api.wait_exit(30)
    finally:
        api.stop()
    # Then each copy drains with nothing unfinished, and the supervisor exits 0
    stopped = [event for event in api.events("http_stopped") if "unfinished" in event]
    assert code == 0
    assert sorted(event["pid"] for event in stopped) == sorted(copies(api))
    assert all(event["unfinished"] == 0 for event in stopped), stopped


def test_a_copy_that_dies_is_replaced_while_the_other_keeps_answering(
        module_env: dict[str, str], worker: ManagedProcess, log_dir: Path) -> None:
    # Given an API with two copies
    api = start_api({**module_env, "HTTP_PROCESSES": str(PROCESSES)}, log_dir, free_port())
    try:
        api.wait_for_event("http_listening", timeout_s=60, count=PROCESSES)
        victim, survivor = sorted(copies(api))
        # When one copy is killed
        os.kill(victim, signal.SIGKILL)
        # Then the supervisor logs its exit, and the other copy answers alone until a replacement is up
        exited = api.wait_for_event("http_process_exited", timeout_s=60)[-1]
        while_alone = predict_for(api.url, 1, clients=2)
        # And the replacement listens on the same port
        wait_until(lambda: len(copies(api)) == PROCESSES + 1, 60, "a replacement copy listening", [api])
        after = predict_for(api.url, 2)
        replacement = copies(api) - {victim, survivor}
        print(f"\nkilled {victim}: exit logged {exited}; alone {dict(while_alone)}; replacement {replacement}; "
              f"after {dict(after)}")
        assert exited["copy_pid"] == victim and exited["code"] == -signal.SIGKILL
        assert set(while_alone) == {200}, dict(while_alone)
        assert set(after) == {200}, dict(after)
        assert api.alive()
    finally:
        api.stop()
