"""SIGTERM under load, for each process: the API answers every request it accepted and exits 0; a worker
finishes its running tasks (warm) or gives them back to the queue (SIGTERM then SIGQUIT, cold); a bridge
finishes its claims in flight, commits no further than they reach, and exits 0.

Real processes throughout: `python -m webapp`, `celery -A tasks worker`, `python -m bridge`, over the
test Redis, S3 and Tansu broker. Each test prints what it counted (run with -s to see it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import urllib3

from devtools.processes import ManagedProcess, start_api, start_worker
from devtools.services import Service, free_port
from settings import Settings
from tasks.celery_config import PREDICT_TASK, InferenceCelery, create_celery
from tasks.demo_model import SAMPLE_KEY
from tests.e2e.bridge_support import (
    bridge_env,
    committed,
    computed_claims,
    create_topic,
    publish,
    read_all,
    results,
    valid_claims,
    wait_committed,
    wait_until,
)
from tests.e2e.test_lifecycle import ROW

pytestmark = pytest.mark.e2e

API_DRAIN_TIMEOUT_S = 10
WORKER_DRAIN_TIMEOUT_S = 20
# After its drain, a process still has to be scheduled, flush its logs and tear down its interpreter: on a loaded
# 2-core machine that can take seconds. Exits are checked against DRAIN_TIMEOUT_S plus this, a hang fails anyway.
EXIT_SLACK_S = 10
# billiard 4.3: a pool process handed a task as a warm shutdown begins runs it, but the main process no longer
# reads its result; the pool process waits this long for it before it exits, and the task, never
# acknowledged, runs again on another node (see test_worker_sigterm_while_a_task_is_handed_...).
BILLIARD_RESULT_WAIT_S = 30
# Rows per predict task in the worker tests: enough that a task runs for about a second (decoding,
# validating and predicting 150,000 rows), so that a signal sent when it starts finds it running.
SLOW_TASK_ROWS = 150_000


@dataclass
class Tally:
    """What the clients of a draining API saw: answers by status, and the requests that got none."""

    statuses: Counter[int] = field(default_factory=Counter)
    refused: int = 0  # the connection was not accepted (the listener had closed): the client knows it was not served
    aborted: list[str] = field(default_factory=list)  # accepted, then reset, cut or unanswered: never acceptable
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, outcome: int | str) -> None:
        with self.lock:
            if isinstance(outcome, int):
                self.statuses[outcome] += 1
            elif outcome == "refused":
                self.refused += 1
            else:
                self.aborted.append(outcome)


def outcome_of(error: requests.RequestException) -> str:
    """'refused' when the connection was never established; otherwise what went wrong after it was."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    if isinstance(error, requests.ConnectionError) and isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "refused"
    return f"{type(error).__name__}: {str(error)[:200]}"


def test_sigterm_under_load_answers_every_accepted_request(module_env: dict[str, str], worker: ManagedProcess,
                                                          log_dir: Path) -> None:
    # Given an API with a worker behind it, and 8 clients sending /predict back to back over keep-alive connections
    server = start_api({**module_env, "DRAIN_TIMEOUT_S": str(API_DRAIN_TIMEOUT_S)}, log_dir, free_port())
    url = server.url
    tally, stop = Tally(), threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{url}/predict", json={"features": ROW}, timeout=(2, 30),
                                            headers={"X-Request-Timeout-Ms": "10000"})
                except requests.RequestException as error:
                    outcome = outcome_of(error)
                    tally.count(outcome)
                    if outcome == "refused":
                        return  # the server is gone for this client
                    continue
                tally.count(response.status_code)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in clients:
        thread.start()
    # And a readiness probe whose request is half sent (headers not finished) when the drain begins
    probe = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
    try:
        probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: api\r\n")
        wait_until(lambda: tally.statuses[200] >= 100, 60, "100 predictions answered", [server, worker])
        # When the API receives SIGTERM
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        draining = server.wait_for_event("http_draining", timeout_s=60)[-1]
        # Then the probe, finished now, is answered 503 "draining" and its connection closed
        probe.sendall(b"\r\n")
        readiness = read_until_closed(probe)
        # And the API exits 0 within DRAIN_TIMEOUT_S (and the time to tear the process down)
        code = server.wait_exit(API_DRAIN_TIMEOUT_S + EXIT_SLACK_S)
        took = time.monotonic() - signalled
    finally:
        probe.close()
        stop.set()
        for thread in clients:
            thread.join(40)
    stopped = server.events("http_stopped")[-1]
    head, _, body = readiness.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0].decode()
    print(f"\nAPI SIGTERM under load: answers {dict(tally.statuses)}, refused after close {tally.refused}, "
          f"aborted {len(tally.aborted)}; in flight at SIGTERM {draining['in_flight']}, unfinished {stopped['unfinished']}; "
          f"/readyz while draining: {status_line} {body.decode()}; exit {code} after {took:.2f}s")
    assert code == 0 and took <= API_DRAIN_TIMEOUT_S + EXIT_SLACK_S, f"exit {code} after {took:.1f}s"
    assert stopped["unfinished"] == 0
    assert not tally.aborted, f"requests accepted but not answered: {tally.aborted[:5]}"
    assert tally.statuses[500] == 0 and set(tally.statuses) <= {200, 503}, dict(tally.statuses)
    assert not any(thread.is_alive() for thread in clients), "a client hung"
    crashed = [e["message"][:300] for e in server.events("log") if "Exception when servicing" in str(e.get("message"))]
    assert not crashed, f"request threads failed while draining: {crashed[:3]}"
    assert status_line.startswith("HTTP/1.1 503") and b"connection: close" in head.lower(), readiness
    assert json.loads(body)["checks"]["draining"] == "shutting down"


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


# -- worker -------------------------------------------------------------------------------------------


class TaskEvents:
    """Celery task events (the workers run with -E), captured by a thread from the moment it is ready:
    which node received, started and finished which task, and when."""

    def __init__(self, app: InferenceCelery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._trigger: tuple[str, str, Callable[[], None]] | None = None
        self.fired = threading.Event()
        self.fired_at = 0.0

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        # The subscription is live once anything arrives: the workers' heartbeats come every 2 s.
        wait_until(lambda: bool(self.events), 30, "a first Celery event")
        return self

    def __exit__(self, *_: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._record})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            trigger = self._trigger
        if trigger and event.get("type") == trigger[0] and event.get("hostname", "").startswith(trigger[1]):
            self._trigger = None
            self.fired_at = time.time()
            trigger[2]()
            self.fired.set()

    def on_first(self, kind: str, node: ManagedProcess, action: Callable[[], None]) -> None:
        """Run `action` in the receiving thread as soon as the first `task-<kind>` event from `node` arrives
        (no polling delay: a task of about a second is still running when a signal sent this way lands)."""
        self._trigger = (f"task-{kind}", f"{node.name}@", action)

    def of(self, kind: str, node: ManagedProcess | None = None, after: float = 0.0) -> list[str]:
        """Task ids of the `task-<kind>` events (from `node` only, at or after `after` epoch seconds)."""
        with self._lock:
            return [e["uuid"] for e in self.events if e.get("type") == f"task-{kind}" and e.get("timestamp", 0) >= after
                    and (node is None or e.get("hostname", "").startswith(f"{node.name}@"))]


@pytest.fixture
def lanes(module_env: dict[str, str], settings: Settings,
          module_redis: redis.Redis) -> Iterator[tuple[dict[str, str], InferenceCelery]]:
    """Queues of their own (the module's worker never sees them), the environment naming them and a
    producer app; the queues and the predict results are deleted afterwards."""
    name = f"drain-{uuid.uuid4().hex[:8]}"
    env = {**module_env, "CELERY_QUEUE": name, "CELERY_BATCH_QUEUE": f"{name}-batch"}
    app = create_celery(settings.model_copy(update={"celery_queue": name, "celery_batch_queue": f"{name}-batch"}),
                        main="drain-test")
    yield env, app
    module_redis.delete(name, f"{name}-batch", *module_redis.scan_iter("celery-task-meta-drain:*"))


def start_node(env: dict[str, str], log_dir: Path, name: str, processes: int = 2) -> ManagedProcess:
    return start_worker({**env, "QUEUE_WORKERS": str(processes), "WORKER_METRICS_PORT": str(free_port())}, log_dir,
                        "--without-mingle", "--without-gossip", name=name)


def enqueue_slow(app: InferenceCelery, count: int) -> list[str]:
    """`count` predict tasks of SLOW_TASK_ROWS rows each, no deadline; returns their task ids."""
    ids = [f"drain:{uuid.uuid4().hex}" for _ in range(count)]
    for task_id in ids:
        app.send_task(PREDICT_TASK, args=[[ROW] * SLOW_TASK_ROWS], task_id=task_id, argsrepr="[<rows>]")
    return ids


def succeeded(app: InferenceCelery, ids: list[str] | set[str]) -> set[str]:
    """The tasks whose result is stored as SUCCESS (a worker stores it before it acknowledges the message)."""
    return {task_id for task_id in ids if app.backend.get_task_meta(task_id)["status"] == "SUCCESS"}


def pool_processes(node: ManagedProcess) -> list[int]:
    """The pids of the worker node's pool processes (the children of its main process)."""
    pids: list[int] = []
    for thread in Path(f"/proc/{node.pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in (thread / "children").read_text().split()]
    return pids


def signal_each(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def sigterm_on_first(kind: str, node: ManagedProcess, app: InferenceCelery, events: TaskEvents, *,
                     pause_pool: bool = False) -> tuple[list[str], float, list[int]]:
    """Enqueue 6 slow tasks and send `node` SIGTERM as soon as its first `task-<kind>` event arrives; with
    `pause_pool`, its pool processes are stopped (SIGSTOP) first, so the task that started is still running
    when the signal lands however fast the machine is. Returns the task ids, when the signal was sent (epoch
    seconds) and the pool processes stopped (the caller resumes them with SIGCONT)."""
    paused: list[int] = []

    def act() -> None:
        if pause_pool:
            paused.extend(pool_processes(node))
            signal_each(paused, signal.SIGSTOP)
        node.signal(signal.SIGTERM)

    events.on_first(kind, node, act)
    ids = enqueue_slow(app, 6)
    wait_until(events.fired.is_set, 60, f"a task {kind} on {node.name}", [node])
    return ids, events.fired_at, paused


def exits_having_finished(node: ManagedProcess, app: InferenceCelery, events: TaskEvents,
                          timeout_s: float = WORKER_DRAIN_TIMEOUT_S) -> tuple[int, set[str]]:
    """Wait for `node` to exit; it must exit 0 with every task it started stored as SUCCESS. Returns the exit
    code and the tasks it started."""
    code = node.wait_exit(timeout_s)
    assert code == 0, node.output()[-3000:]
    started = set(events.of("started", node))
    assert succeeded(app, started) == started, "a task started before the exit did not finish"
    return code, started


def run_the_rest(env: dict[str, str], log_dir: Path, app: InferenceCelery, events: TaskEvents, ids: list[str],
                 name: str) -> tuple[set[str], Counter[str], set[str]]:
    """Start another node and wait until every task has succeeded; returns the tasks stored as SUCCESS, how
    many times each task started (on any node), and the tasks this node completed."""
    node = start_node(env, log_dir, name)
    try:
        wait_until(lambda: set(events.of("succeeded")) >= set(ids), 90, "every task succeeded", [node])
        return succeeded(app, ids), Counter(events.of("started")), set(events.of("succeeded", node))
    finally:
        node.stop()


def test_worker_sigterm_finishes_running_tasks_and_leaves_the_rest_queued(
        lanes: tuple[dict[str, str], InferenceCelery], log_dir: Path) -> None:
    env, app = lanes
    # One process: with prefetch 1 no task is being handed to a pool process while the first one runs, which
    # is when the signal is sent (a task handed over as the shutdown begins: BILLIARD_RESULT_WAIT_S).
    first = start_node(env, log_dir, "drain-a", processes=1)
    try:
        with TaskEvents(app) as events:
            # Given a worker node working through 6 tasks of about a second each
            # When it receives SIGTERM while one runs (its pool process held stopped from the moment the task
            # started until the warm shutdown has begun)
            ids, signalled, paused = sigterm_on_first("started", first, app, events, pause_pool=True)
            try:
                first.wait_for(lambda: "Warm shutdown" in first.output(), 60, "the warm shutdown")
            finally:
                signal_each(paused, signal.SIGCONT)
            # Then it finishes every task it had started and exits 0 (the worker has no drain timeout of its
            # own: warm shutdown waits for the running tasks; this bounds it for tasks of about a second)
            code, started_on_first = exits_having_finished(first, app, events)
            took = time.time() - signalled
            wait_until(lambda: set(events.of("succeeded", first)) >= started_on_first, 60, "drain-a's last events")
            running = set(events.of("succeeded", first, after=signalled))
            assert running, "no task was running at SIGTERM"
            left = set(ids) - started_on_first
            assert left, "drain-a took every task: make the burst larger"
            # And the tasks it had not started are still queued: another node runs them, none is lost or run twice
            done, started, by_second = run_the_rest(env, log_dir, app, events, ids, "drain-b")
    finally:
        first.stop()
    twice = sorted(task_id for task_id, times in started.items() if times > 1)
    print(f"\nworker SIGTERM (warm): accepted {len(ids)}, running at SIGTERM {len(running)} (finished by drain-a after "
          f"the signal), drain-a {len(started_on_first)} / drain-b {len(by_second)} done; results {len(done)}, lost "
          f"{len(ids) - len(done)}, run twice {len(twice)}; exit {code} after {took:.2f}s")
    assert took <= WORKER_DRAIN_TIMEOUT_S
    assert done == set(ids) and not twice
    assert by_second == left


def test_worker_sigterm_while_a_task_is_handed_to_a_pool_process_exits_and_loses_nothing(
        lanes: tuple[dict[str, str], InferenceCelery], log_dir: Path) -> None:
    """The main process writes a task to a pool process's pipe a piece at a time when it is larger than the pipe
    (64 KiB; these are 8 MB). Celery's own warm shutdown hangs when SIGTERM lands in between: the pool process
    waits for the rest, the pool's join for the pool process, for ever (tasks/pool.py stops that process).
    When the hand-over completed just before the shutdown, the pool process runs the task and the worker
    exits only after BILLIARD_RESULT_WAIT_S, the task run again by the next node: that is bounded, and
    allowed here for at most that one task."""
    env, app = lanes
    first = start_node(env, log_dir, "handover-a")
    try:
        with TaskEvents(app) as events:
            # Given a worker node with two idle pool processes
            # When it receives SIGTERM as soon as it has received its first 8 MB task, while handing it over
            ids, signalled, _ = sigterm_on_first("received", first, app, events)
            # Then it exits 0, having run to the end whatever it had started
            code, started_on_first = exits_having_finished(first, app, events,
                                                           WORKER_DRAIN_TIMEOUT_S + BILLIARD_RESULT_WAIT_S)
            took = time.time() - signalled
            stopped = first.events("pool_process_stopped_mid_message")
            # And every other task is still queued: another node runs them, none is lost or run twice
            done, started, _ = run_the_rest(env, log_dir, app, events, ids, "handover-b")
    finally:
        first.stop()
    twice = sorted(task_id for task_id, times in started.items() if times > 1)
    print(f"\nworker SIGTERM during a hand-over: accepted {len(ids)}, handover-a {len(started_on_first)} done, pool "
          f"processes stopped mid-message {len(stopped)}; results {len(done)}, lost {len(ids) - len(done)}, run twice "
          f"{len(twice)}; exit {code} after {took:.2f}s")
    assert took <= WORKER_DRAIN_TIMEOUT_S + BILLIARD_RESULT_WAIT_S
    assert done == set(ids)
    # And nothing runs twice, except a task handed over whole as the shutdown began (see above)
    assert len(twice) <= 1 and (not twice or took > BILLIARD_RESULT_WAIT_S), (twice, took)


def test_worker_sigterm_then_sigquit_stops_at_once_and_requeues_the_running_task(
        lanes: tuple[dict[str, str], InferenceCelery], log_dir: Path) -> None:
    env, app = lanes
    first = start_node(env, log_dir, "cold-a")
    try:
        with TaskEvents(app) as events:
            # Given a worker node running slow tasks, its pool processes held stopped from the moment the first
            # one started (so that they are still running it, however fast the machine, when the node is told)
            # When it receives SIGTERM (warm shutdown), then SIGQUIT (cold shutdown)
            ids, _, paused = sigterm_on_first("started", first, app, events, pause_pool=True)
            try:
                first.wait_for(lambda: "Warm shutdown" in first.output(), 60, "the warm shutdown")
                quit_at = time.monotonic()
                first.signal(signal.SIGQUIT)
                # Then it stops (it SIGKILLs its pool processes, stopped or not) without finishing what it was
                # running: a warm shutdown would wait for the stopped pool processes for ever, so any exit shows it
                code = first.wait_exit(WORKER_DRAIN_TIMEOUT_S + EXIT_SLACK_S)
                took = time.monotonic() - quit_at
            finally:
                signal_each(paused, signal.SIGCONT)
            started_on_first = set(events.of("started", first))
            interrupted = started_on_first - succeeded(app, started_on_first)
            assert interrupted, "every task had finished before SIGQUIT"
            # And the interrupted tasks went back to the queue: another node completes them, none is lost
            done, started, by_second = run_the_rest(env, log_dir, app, events, ids, "cold-b")
    finally:
        first.stop()
    twice = sorted(task_id for task_id, times in started.items() if times > 1)
    print(f"\nworker SIGTERM+SIGQUIT (cold): accepted {len(ids)}, interrupted {len(interrupted)}, cold-a "
          f"{len(started_on_first - interrupted)} / cold-b {len(by_second)} done; results {len(done)}, lost "
          f"{len(ids) - len(done)}, started twice {len(twice)}; exit {code} {took:.2f}s after SIGQUIT")
    assert interrupted <= by_second and interrupted <= set(twice)
    assert done == set(ids)


# -- bridge -------------------------------------------------------------------------------------------


def start_paused_bridge(lane: dict[str, str], kafka: str, bridges: Callable[..., ManagedProcess], bucket: str,
                        prefix: str, drain_timeout_s: int) -> tuple[dict[str, str], ManagedProcess, dict[int, int]]:
    """A bridge bounded at BRIDGE_MAXSIZE on a fresh topic, a burst of BURST claims published, and no worker yet:
    the bridge takes BRIDGE_MAXSIZE claims and pauses. Returns its environment, itself and the topic's ends."""
    env = bridge_env(lane, kafka, maxsize=BRIDGE_MAXSIZE, DRAIN_TIMEOUT_S=str(drain_timeout_s))
    create_topic(kafka, env["KAFKA_TOPIC_CLAIMS"])
    bridge = bridges(env, "bridge-a")
    ends = publish(kafka, env["KAFKA_TOPIC_CLAIMS"], valid_claims(prefix, BURST, bucket, SAMPLE_KEY))
    bridge.wait_for_event("consumer_paused", timeout_s=30)
    return env, bridge, ends


def claims_by_offset(kafka: str, topic: str) -> dict[tuple[int, int], str]:
    return {(r.partition, r.offset): r.key.decode() for r in read_all(kafka, topic, BURST)}


def past_unfinished(marks: dict[int, int], placed: dict[tuple[int, int], str], done: set[str]) -> list[str]:
    """Claims below a committed offset without a result object: must be none."""
    return sorted(claim for (partition, offset), claim in placed.items() if offset < marks.get(partition, 0)
                  and claim not in done)


BRIDGE_MAXSIZE, BURST = 40, 400


def test_bridge_sigterm_with_claims_in_flight_finishes_them_commits_and_exits_0(
        lanes: tuple[dict[str, str], InferenceCelery], kafka_service: Service, settings: Settings, log_dir: Path,
        bridges: Callable[..., ManagedProcess]) -> None:
    lane, _ = lanes
    kafka, prefix, drain_timeout_s = kafka_service.address, f"drain-{uuid.uuid4().hex[:6]}", 30
    # Given a bridge holding 40 claims in flight out of a burst of 400 (no worker has taken them yet)
    env, first, ends = start_paused_bridge(lane, kafka, bridges, settings.bucket_processed, prefix,
                                            drain_timeout_s)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    # When it receives SIGTERM, and only then a worker starts on the bulk lane
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    draining = first.wait_for_event("bridge_draining", timeout_s=60)[-1]
    worker = start_node(lane, log_dir, "bridge-worker")
    try:
        # Then the bridge waits for the claims in flight, commits them and exits 0 within DRAIN_TIMEOUT_S
        code = first.wait_exit(drain_timeout_s + EXIT_SLACK_S)
        took = time.monotonic() - signalled
        assert code == 0, first.output()[-3000:]
        stopped = first.events("bridge_stopped")[-1]
        done_at_exit, marks = results(settings, prefix), committed(kafka, group, topic)
        placed = claims_by_offset(kafka, topic)
        behind = past_unfinished(marks, placed, done_at_exit)
        # When a new bridge starts in the same group
        # Then every claim ends with its result and the offsets are committed to the end
        lost, twice, skipped = finish_with_a_new_bridge(env, bridges, worker, settings, kafka, prefix, ends)
    finally:
        worker.stop()
    print(f"\nbridge SIGTERM, drain completes: {BURST} claims, in flight at SIGTERM {draining['in_flight']}, unfinished "
          f"at exit {stopped['unfinished']}, results at exit {len(done_at_exit)}, committed at exit "
          f"{dict(sorted(marks.items()))} (sum {sum(marks.values())}), committed past an unfinished claim {len(behind)}; "
          f"after bridge-b: lost {lost}, computed twice {len(twice)}, redelivered and skipped {skipped}; "
          f"exit {code} after {took:.2f}s")
    assert draining["in_flight"] == BRIDGE_MAXSIZE and stopped["unfinished"] == 0
    assert took <= drain_timeout_s + EXIT_SLACK_S
    assert not behind, f"committed past claims without a result: {behind[:10]}"
    assert sum(marks.values()) == len(done_at_exit) == BRIDGE_MAXSIZE, "commits should cover exactly what finished"
    assert lost == 0 and not twice


def finish_with_a_new_bridge(env: dict[str, str], bridges: Callable[..., ManagedProcess], worker: ManagedProcess,
                             settings: Settings, kafka: str, prefix: str,
                             ends: dict[int, int]) -> tuple[int, list[str], int]:
    """Start bridge-b in the same group and wait until every claim of the burst has its result and the
    offsets are committed to `ends`; returns (claims lost, claims computed twice, redeliveries skipped)."""
    second = bridges({**env, "BRIDGE_METRICS_PORT": str(free_port())}, "bridge-b")
    wait_until(lambda: len(results(settings, prefix)) == BURST, 120, "every claim has a result", [second, worker])
    wait_committed(kafka, env["KAFKA_GROUP_ID"], env["KAFKA_TOPIC_CLAIMS"], ends, [second])
    computed = Counter(computed_claims(worker, prefix))
    skipped = [e for e in worker.events("claim_already_scored") if str(e.get("claim_id", "")).startswith(f"{prefix}-")]
    twice = sorted(claim for claim, times in computed.items() if times > 1)
    return BURST - len(results(settings, prefix)), twice, len(skipped)


def test_bridge_sigterm_when_the_drain_times_out_commits_nothing_unfinished_and_the_next_bridge_redoes_it(
        lanes: tuple[dict[str, str], InferenceCelery], kafka_service: Service, settings: Settings, log_dir: Path,
        bridges: Callable[..., ManagedProcess]) -> None:
    lane, _ = lanes
    kafka, prefix, drain_timeout_s = kafka_service.address, f"late-{uuid.uuid4().hex[:6]}", 2
    # Given a bridge holding 40 claims in flight that no worker will finish within its 2 s drain
    env, first, ends = start_paused_bridge(lane, kafka, bridges, settings.bucket_processed, prefix,
                                            drain_timeout_s)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    # When it receives SIGTERM
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    # Then it gives up after DRAIN_TIMEOUT_S, exits 0 and has committed none of the unfinished claims
    code = first.wait_exit(drain_timeout_s + EXIT_SLACK_S)
    took = time.monotonic() - signalled
    assert code == 0, first.output()[-3000:]
    draining, stopped = first.events("bridge_draining")[-1], first.events("bridge_stopped")[-1]
    marks = committed(kafka, group, topic)
    behind = past_unfinished(marks, claims_by_offset(kafka, topic), results(settings, prefix))
    # When a worker and a new bridge start
    worker = start_node(lane, log_dir, "late-worker")
    try:
        # Then every claim ends with its result, the ones left in flight included, and the offsets reach the end
        lost, twice, skipped = finish_with_a_new_bridge(env, bridges, worker, settings, kafka, prefix, ends)
    finally:
        worker.stop()
    print(f"\nbridge SIGTERM, drain times out: {BURST} claims, in flight at SIGTERM {draining['in_flight']}, unfinished "
          f"at exit {stopped['unfinished']}, committed at exit {dict(sorted(marks.items()))}, committed past an "
          f"unfinished claim {len(behind)}; after bridge-b: lost {lost}, computed twice {len(twice)}, redelivered and "
          f"skipped {skipped} (bound {BRIDGE_MAXSIZE}); exit {code} after {took:.2f}s")
    assert draining["in_flight"] == BRIDGE_MAXSIZE and stopped["unfinished"] == BRIDGE_MAXSIZE
    assert drain_timeout_s <= took <= drain_timeout_s + EXIT_SLACK_S
    assert not behind and sum(marks.values()) == 0
    assert lost == 0 and len(twice) <= BRIDGE_MAXSIZE
