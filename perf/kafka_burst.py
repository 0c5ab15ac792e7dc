"""`python -m perf.kafka_burst [--claims 10000] [--maxsize 40,512]`: a burst of claims through the Kafka bridge.

Starts its own Redis, S3 server (SeaweedFS, or moto's mock with LOCAL_S3=moto) and Kafka-protocol broker
(Tansu), a Celery worker, the bridge and the API, publishes N claims at once (every `--ttl-every`-th with a
`deadline_ms` header 1 ms after publishing, the TTL subset, which the bridge must skip), and measures:

- the bridge's in-flight count, sampled every 50 ms from its /metrics, against QUEUE_MAXSIZE;
- pause/resume transitions (consumer_paused / consumer_resumed log events);
- the drain rate: claims per second from the first publish until every offset is committed;
- the bridge's resident memory, idle and at its peak during the burst;
- results complete (one result object per live claim; each expired claim logged `ttl_expired` and not
  computed), claims computed twice, committed offsets vs the ends;
- interactive /predict latency (p50/p99) idle and while the burst drains;
- then, for each `--alone` bound (512 by default), the same burst without /predict traffic: the bridge's
  own drain rate, labelled `alone` (the /predict probe is a back-to-back client on the lane with the CPU
  first, so on two cores it slows the drain);
- for the plots (perf/kafka_plots.py): the bridge's committed offset, end offset and lag per partition from
  the same scrapes, its consumer_paused/consumer_resumed log events, and the group's committed offsets as
  polled while waiting for the drain.

By default the lanes are split as the README recommends: a worker node for the interactive lane
(`--interactive-workers` processes) and one for the bulk lane (`--workers` processes) which, with the
bridge, runs at SCHED_IDLE (`--bulk-priority`) and, beside /predict, on every core but the first
(`--bulk-cpus`); `--lanes shared` runs one worker node for both. `--label` names a
variant. Writes `run-maxsize<N>[-label].json` and
`samples-maxsize<N>[-label].csv` to perf/results/<YYYY-MM-DD>-<hostname>-kafka-burst/ and regenerates
`summary.md` there from every run in the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import multiprocessing
import multiprocessing.queues
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import requests
from kafka import KafkaAdminClient, KafkaProducer

from devtools.processes import PYTHON, ROOT, ManagedProcess, start_api, start_worker
from devtools.services import Service, free_port, start_kafka, start_redis, start_s3
from perf.common import child_env, cpu_list, loadgen_command, markdown_table, thread_ids, verdict
from perf.kafka_plots import burst_series, plot_inflight, plot_lag, write_series
from settings import Settings
from tasks.demo_model import FEATURES, SAMPLE_KEY, publish_demo
from tasks.storage import ObjectStore

PARTITIONS = 4
SAMPLE_INTERVAL_S = 0.05
_GAUGE = re.compile(r"^(bridge_claims_in_flight|bridge_consumer_paused) (\S+)$", re.MULTILINE)
_OFFSETS = re.compile(r"^bridge_(committed_offset|end_offset|consumer_lag)\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def results_dir(base: Path) -> Path:
    path = base / f"{dt.date.today().isoformat()}-{socket.gethostname()}-kafka-burst"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Sampler:
    """Every SAMPLE_INTERVAL_S: the bridge's in-flight gauge, its paused flag and its RSS; and, when they change,
    its committed offset, end offset and lag per partition of `topic` (its LagMonitor refreshes them once a second).

    It runs in a process of its own, on a fixed tick: in this process it shared the interpreter with the
    producer and the /predict bookkeeping, and gaps between samples reached 200-380 ms."""

    def __init__(self, url: str, pid: int, topic: str = "") -> None:
        self.rows: list[tuple[float, float, float, float]] = []  # t, in_flight, paused, rss_mb
        self.offsets: list[tuple[float, int, float, float, float]] = []  # t, partition, committed, end, lag
        self.started = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        self.started_epoch = time.time()
        context = multiprocessing.get_context("spawn")  # not fork: this process runs the producer's threads
        self._stop = context.Event()
        self._results: multiprocessing.queues.Queue[Any] = context.Queue()
        self._process = context.Process(target=_sample, args=(url, pid, topic, self.started, self._stop, self._results),
                                        name="burst-sampler", daemon=True)

    def start(self) -> Sampler:
        self._process.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            self.rows, self.offsets = self._results.get(timeout=10)
        self._process.join(5)


def _sample(url: str, pid: int, topic: str, started: float, stop: Any, results: Any) -> None:
    """The sampler's process: sample until `stop` is set, then hand back (rows, offsets)."""
    process = psutil.Process(pid)
    session = requests.Session()
    rows: list[tuple[float, float, float, float]] = []
    offsets: list[tuple[float, int, float, float, float]] = []
    last: dict[int, tuple[float, float, float]] = {}
    tick = time.monotonic()
    while not stop.is_set():
        tick = max(tick + SAMPLE_INTERVAL_S, time.monotonic())  # a late sample moves the ticks, never bunches them
        stop.wait(max(0.0, tick - time.monotonic()))
        try:
            text = session.get(f"{url}/metrics", timeout=1).text
            rss = process.memory_info().rss / 2**20
        except (requests.RequestException, psutil.Error):
            continue
        gauges = dict(_GAUGE.findall(text))
        t = round(time.monotonic() - started, 3)
        rows.append((t, float(gauges.get("bridge_claims_in_flight", 0)), float(gauges.get("bridge_consumer_paused", 0)),
                     round(rss, 2)))
        found: dict[int, dict[str, float]] = {}
        for name, labels, value in _OFFSETS.findall(text):
            label = dict(_LABEL.findall(labels))
            if label.get("topic") == topic and label.get("partition", "").isdigit():
                found.setdefault(int(label["partition"]), {})[name] = float(value)
        for partition, values in sorted(found.items()):
            row = (values.get("committed_offset", 0.0), values.get("end_offset", 0.0), values.get("consumer_lag", 0.0))
            if last.get(partition) != row:
                last[partition] = row
                offsets.append((t, partition, *row))
    results.put((rows, offsets))


class PredictProbe:
    """/predict from a process of its own (`perf.loadgen probe`: one keep-alive connection, the next request
    10 ms after each answer), so the latencies are the API's: this process publishes the burst with
    kafka-python and samples the bridge meanwhile, and a probe thread here would wait for its interpreter
    lock too. Latencies in ms, of the valid 200s."""

    INTERVAL_MS = 10

    def __init__(self, url: str, out: Path) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.out = out
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: Counter[str] = Counter()
        self._process: Any = None

    def start(self, duration_s: float) -> PredictProbe:
        args = loadgen_command("probe", self.port, self.out, "--method", "POST", "--path", "/predict", "--kind",
                               "predict", "--n-features", str(len(FEATURES)), "--keepalive",
                               "--interval-ms", str(self.INTERVAL_MS), "--duration-s", str(duration_s))
        self._log = open(self.out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout_s: float = 30) -> list[float]:
        """Stop it now (SIGTERM: it writes what it measured) and read the answers."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise
        finally:
            self._log.close()
        with open(self.out, newline="") as handle:
            for row in csv.DictReader(handle):
                ok = row["status"] == "200" and row["valid"] == "1"
                self.statuses[row["status"] if row["status"] != "0" else f"error {row['detail'][:40]}"] += 1
                if ok:
                    self.latencies.append(float(row["latency_ms"]))
                elif row["status"] == "0":
                    self.errors += 1
        return list(self.latencies)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def run_for(self, seconds: float) -> list[float]:
        self.start(seconds)
        self._process.wait(seconds + 30)
        return self.stop()


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))], 2)


def expiring(prefix: str, count: int, ttl_every: int) -> set[str]:
    """The claim ids published with `deadline_ms` 1 ms after publishing (as `ttl_ms=1` does): every
    `ttl_every`-th claim (none when 0)."""
    return {f"{prefix}-{i}" for i in range(count) if ttl_every and i % ttl_every == ttl_every - 1}


def publish(kafka: str, topic: str, prefix: str, count: int, bucket: str, expired: set[str]) -> dict[int, int]:
    producer = KafkaProducer(bootstrap_servers=kafka, linger_ms=20, batch_size=262144)
    deadline = [("deadline_ms", str(int(time.time() * 1000) + 1).encode())]
    try:
        futures = [producer.send(topic, key=f"{prefix}-{i}".encode(), partition=i % PARTITIONS,
                                 value=json.dumps({"claim_id": f"{prefix}-{i}", "bucket": bucket,
                                                   "object_key": SAMPLE_KEY}).encode(),
                                 headers=deadline if f"{prefix}-{i}" in expired else None)
                   for i in range(count)]
        producer.flush(120)
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.get(timeout=60)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close()


def default_workers(*, split: bool, beside_predict: bool) -> int:
    """The bulk node's processes. Split lanes beside /predict: the cores less one. SCHED_IDLE yields the
    CPU to a waking task only when the kernel next reschedules, which without full preemption waits until
    a bulk process in a system call returns; with a core left over (and `bulk_cpus`), the interactive lane
    wakes on it at once (README, "Split the lanes"). Alone: every core. Shared lanes: 2."""
    if not split:
        return 2
    cores = len(os.sched_getaffinity(0))
    return max(1, cores - 1) if beside_predict else cores


def bulk_cpus(choice: str, *, split: bool, beside_predict: bool) -> set[int]:
    """The cores the bulk lane is confined to (empty: no confinement). `auto`: with split lanes beside
    /predict, every usable core but the first, so that a waking /predict always finds a core no bulk
    process holds; `all`: none; otherwise a list such as `1` or `2-7`."""
    if not split or (choice == "auto" and not beside_predict):
        return set()
    return cpu_list(choice)


def committed(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: mark.offset for tp, mark in offsets.items() if tp.topic == topic}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    services: list[Service] = []
    processes: list[ManagedProcess] = []
    probes: list[PredictProbe | None] = []
    try:
        print("starting Redis, S3 and Kafka ...", flush=True)
        redis_service, s3_service, kafka_service = start_redis(workdir=workdir), start_s3(workdir=workdir), \
            start_kafka(workdir=workdir)
        services += [redis_service, s3_service, kafka_service]
        print(f"S3 server: {s3_service.server}", flush=True)
        settings = Settings.model_validate({"redis_url": f"redis://{redis_service.address}/0",
                                             "s3_endpoint": s3_service.address})
        publish_demo(settings)
        topic = f"claims-{uuid.uuid4().hex[:6]}"
        group = f"burst-{topic}"
        metrics_port = free_port()
        env = child_env({
            "REDIS_URL": settings.redis_url, "S3_ENDPOINT": s3_service.address,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_service.address, "KAFKA_TOPIC_CLAIMS": topic,
            "KAFKA_TOPIC_DLQ": f"{topic}.dlq", "KAFKA_GROUP_ID": group, "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
            "QUEUE_MAXSIZE": str(args.maxsize), "QUEUE_WORKERS": str(args.workers),
            "BRIDGE_METRICS_PORT": str(metrics_port)})
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        print("starting worker, bridge and API ...", flush=True)
        split = args.lanes == "split"
        # The bulk lane's CPU priority: SCHED_IDLE (`chrt --idle 0`: runs only on CPU time nothing else
        # wants, giving way to any other task at the next reschedule) or a niceness (`nice -n N`: a
        # smaller share).
        prioritised = split and args.bulk_priority != "normal"
        bulk_prefix = (["chrt", "--idle", "0"] if args.bulk_priority == "idle" else ["nice", "-n", str(args.bulk_nice)]) \
            if prioritised else []
        # And its cores: beside /predict, all but the first (README, "Split the lanes").
        cpus = bulk_cpus(args.bulk_cpus, split=split, beside_predict=args.api)
        cpu_names = ",".join(map(str, sorted(cpus)))
        if cpus:
            bulk_prefix = ["taskset", "--cpu-list", cpu_names, *bulk_prefix]
        # Here the S3 stand-in and the Kafka broker serve only the bulk lane (/predict reads neither), on the
        # same two cores; in a deployment they are MinIO and Kafka on machines of their own. Give them the bulk
        # lane's priority and cores, every thread (Tansu's runtime threads exist already).
        for service in (s3_service, kafka_service):
            if service.process is None or not (cpus or prioritised):
                continue
            for tid in thread_ids(service.process.pid):
                if cpus:
                    os.sched_setaffinity(tid, cpus)
                if prioritised and args.bulk_priority == "idle":
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                elif prioritised:
                    os.setpriority(os.PRIO_PROCESS, tid, args.bulk_nice)
        if args.lanes == "split":
            # The deployment README recommends: a worker node per lane, the bulk lane (its workers and the
            # bridge) at a lower CPU priority, so that a burst of claims cannot queue /predict behind it.
            worker = start_worker(env, logs, "-Q", settings.celery_batch_queue, name="bulk", prefix=bulk_prefix)
            processes.append(worker)
            processes.append(start_worker(env, logs, "-Q", settings.celery_queue,
                                          f"--concurrency={args.interactive_workers}", name="interactive"))
        else:
            worker = start_worker(env, logs)
            processes.append(worker)
        bridge = ManagedProcess("bridge", [*bulk_prefix, PYTHON, "-m", "bridge"], env, logs).start()
        processes.append(bridge)
        url = f"http://127.0.0.1:{metrics_port}"
        bridge.wait_for(lambda: _status(f"{url}/readyz") == 200, 60, "bridge /readyz")
        api = start_api(env, logs, free_port()) if args.api else None
        if api is not None:
            processes.append(api)
        # Idle figures: memory of the ready bridge, and /predict latency with no burst.
        idle_rss = statistics.median(_rss_samples(bridge.pid, 10))
        idle_predict = PredictProbe(api.url, workdir / "predict-idle.csv").run_for(args.predict_idle_s) \
            if api is not None else []
        sampler = Sampler(url, bridge.pid, topic).start()
        probe = PredictProbe(api.url, workdir / "predict-busy.csv").start(args.timeout_s) if api is not None else None
        probes.append(probe)
        admin = KafkaAdminClient(bootstrap_servers=kafka_service.address)
        print(f"publishing {args.claims} claims (QUEUE_MAXSIZE={args.maxsize}) ...", flush=True)
        started = time.monotonic()
        prefix = f"b{uuid.uuid4().hex[:6]}"
        expired = expiring(prefix, args.claims, args.ttl_every)
        ends = publish(kafka_service.address, topic, prefix, args.claims, settings.bucket_processed, expired)
        published_s = time.monotonic() - started
        deadline = started + args.timeout_s
        final: dict[int, int] = {}
        commits: list[tuple[float, dict[int, int]]] = []
        while time.monotonic() < deadline:
            final = committed(admin, group, topic)
            commits.append((time.monotonic(), final))
            if final == ends:
                break
            if not (bridge.alive() and worker.alive()):
                raise RuntimeError(f"a process exited during the burst:\n{bridge.output()[-2000:]}")
            time.sleep(0.2)
        drained_s = time.monotonic() - started
        sampler.stop()
        if probe is not None:
            probe.stop()
        admin.close()
        store = ObjectStore(settings)
        stored_ids = {obj.object_name.removeprefix("claims/").removesuffix(".json") for obj in
                      store.client.list_objects(settings.bucket_logs, prefix=f"claims/{prefix}-", recursive=True)}
        stored = len(stored_ids)
        expired_logged = {e["key"] for e in bridge.events("ttl_expired") if e.get("key") in expired}
        computed = Counter(e["claim_id"] for e in worker.events("predict_inference_start") if e.get("claim_id"))
        in_flight = [row[1] for row in sampler.rows]
        rss = [row[3] for row in sampler.rows]
        busy_predict = probe.latencies if probe is not None else []
        return {
            "claims": args.claims, "maxsize": args.maxsize, "workers": args.workers, "partitions": PARTITIONS,
            "s3_server": s3_service.server,
            "label": args.label, "lanes": args.lanes, "bulk_nice": (args.bulk_priority if args.bulk_priority != "nice" else f"nice {args.bulk_nice}")
            if args.lanes == "split" else "normal",
            "bulk_cpus": cpu_names or "any",
            "interactive_workers": args.interactive_workers if args.lanes == "split" else 0,
            "samples": len(sampler.rows),
            "sample_interval_ms_max": round(max((b[0] - a[0] for a, b in zip(sampler.rows, sampler.rows[1:],
                                                                               strict=False)), default=0) * 1000, 1),
            "in_flight_max": max(in_flight, default=0), "within_bound": max(in_flight, default=0) <= args.maxsize,
            "enqueued_depth_max": max((e["depth"] for e in bridge.events("queue_enqueued")), default=0),
            "pauses": len(bridge.events("consumer_paused")), "resumes": len(bridge.events("consumer_resumed")),
            "publish_s": round(published_s, 2), "drain_s": round(drained_s, 2),
            "drain_rate_per_s": round(args.claims / drained_s, 1) if final == ends else None,
            "computed_rate_per_s": round((args.claims - len(expired)) / drained_s, 1) if final == ends else None,
            "rss_idle_mb": round(idle_rss, 1), "rss_peak_mb": round(max(rss, default=idle_rss), 1),
            "rss_growth_mb": round(max(rss, default=idle_rss) - idle_rss, 1),
            "results_stored": stored, "ttl_claims": len(expired), "ttl_expired_logged": len(expired_logged),
            "ttl_computed": len(stored_ids & expired),
            "results_complete": stored_ids == {f"{prefix}-{i}" for i in range(args.claims)} - expired
            and expired_logged == expired,
            "computed_twice": sum(1 for n in computed.values() if n > 1),
            "ends": {str(k): v for k, v in sorted(ends.items())},
            "committed": {str(k): v for k, v in sorted(final.items())}, "committed_at_end": final == ends,
            "predict_idle_p50_ms": percentile(idle_predict, 50), "predict_idle_p99_ms": percentile(idle_predict, 99),
            "predict_busy_p50_ms": percentile(busy_predict, 50), "predict_busy_p99_ms": percentile(busy_predict, 99),
            "predict_busy_count": len(busy_predict), "predict_busy_errors": probe.errors if probe else 0,
            "predict_busy_statuses": dict(probe.statuses) if probe else {},
            "api_alive_at_end": api.alive() if api is not None else None,
            "api_log_tail": api.output()[-1500:] if api is not None and not api.alive() else "",
            "_rows": sampler.rows,
            "_plots": burst_series(sampler, ends, commits, bridge, started),
        }
    finally:
        for probe_left in probes:
            if probe_left is not None:
                probe_left.kill()
        for process in reversed(processes):
            process.stop()
        for service in services:
            service.stop()


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return 0


def _rss_samples(pid: int, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        samples.append(psutil.Process(pid).memory_info().rss / 2**20)
        time.sleep(0.1)
    return samples


def write(out: Path, result: dict[str, Any]) -> None:
    rows = result.pop("_rows")
    series = result.pop("_plots")
    name = f"maxsize{result['maxsize']}" + (f"-{result['label']}" if result.get("label") else "")
    with open(out / f"samples-{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "in_flight", "paused", "rss_mb"])
        writer.writerows(rows)
    write_series(out, name, series)
    plot_inflight(out, name, rows, series, result["maxsize"])
    plot_lag(out, name, series)
    (out / f"run-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_summary(out)


def s3_servers(runs: list[dict[str, Any]]) -> str:
    """The S3 servers the runs used (runs recorded before it was noted used moto)."""
    return ", ".join(dict.fromkeys(run.get("s3_server", "moto") for run in runs))


def write_summary(out: Path) -> None:
    """summary.md from every run-maxsize<N>.json (and its samples CSV) in `out`."""
    runs = [json.loads(path.read_text()) for path in sorted(out.glob("run-maxsize*.json"))]
    runs.sort(key=lambda r: (r["maxsize"], r.get("label") or ""))
    for each in runs:
        label = f"-{each['label']}" if each.get("label") else ""
        each.update(sample_gaps(out / f"samples-maxsize{each['maxsize']}{label}.csv"))
    lines = [
        f"# Kafka burst through the bridge ({socket.gethostname()}, {dt.date.today().isoformat()})",
        "",
        f"{os.cpu_count()} CPUs. Each run: its own Redis, S3 server ({s3_servers(runs)}), Tansu broker, the Celery workers (split "
        "lanes: an interactive node, and a bulk node of QUEUE_WORKERS processes which, with the bridge and the "
        "S3 stand-in and Kafka broker that only the bulk lane uses, runs at the bulk lane's CPU priority and on "
        "its cores), the bridge and the API; N claims published at once on a 4-partition topic, "
        "each claim scoring the 256-row demo Parquet file. In-flight and RSS sampled every 50 ms from the "
        "bridge's /metrics and /proc. Drain rate: N over the time from the first publish until every "
        "partition's committed offset reached its end. /predict: one client, back to back.",
        "",
        "| | " + " | ".join(run_name(r) for r in runs) + " |",
        "| --- | " + " | ".join("---" for _ in runs) + " |",
    ]
    fields = [
        ("claims", "claims published"), ("lanes", "worker lanes"), ("bulk_nice", "bulk lane CPU priority"),
        ("bulk_cpus", "bulk lane cores"),
        ("interactive_workers", "interactive-only worker processes"),
        ("workers", "bulk-lane worker processes (split) or all (shared)"),
        ("samples", "in-flight samples"),
        ("sample_interval_ms_max", "longest gap between samples (ms)"),
        ("sample_gap_p99_ms", "p99 gap between samples (ms)"), ("gaps_over_100ms", "gaps over 100 ms"),
        ("in_flight_max", "max in-flight (sampled)"), ("enqueued_depth_max", "max in-flight (logged per claim)"),
        ("within_bound", "never above the bound"), ("pauses", "consumer_paused"), ("resumes", "consumer_resumed"),
        ("publish_s", "publish time (s)"), ("drain_s", "publish to fully committed (s)"),
        ("drain_rate_per_s", "drain rate (claims/s)"), ("computed_rate_per_s", "of which computed (claims/s)"),
        ("rss_idle_mb", "bridge RSS idle (MB)"),
        ("rss_peak_mb", "bridge RSS peak (MB)"), ("rss_growth_mb", "RSS growth (MB)"),
        ("results_stored", "result objects"), ("ttl_claims", "claims published with ttl_ms=1"),
        ("ttl_expired_logged", "of them logged ttl_expired"), ("ttl_computed", "of them computed"),
        ("results_complete", "every live claim has a result, every expired one is logged and has none"),
        ("computed_twice", "claims computed twice"), ("committed_at_end", "committed offsets at the ends"),
        ("predict_idle_p50_ms", "/predict p50 idle (ms)"), ("predict_idle_p99_ms", "/predict p99 idle (ms)"),
        ("predict_busy_p50_ms", "/predict p50 during burst (ms)"),
        ("predict_busy_p99_ms", "/predict p99 during burst (ms)"), ("predict_busy_count", "/predict during burst"),
        ("predict_busy_errors", "/predict errors during burst"), ("predict_busy_statuses", "/predict statuses"),
        ("api_alive_at_end", "API alive at the end"),
    ]
    for key, label in fields:
        lines.append(f"| {label} | " + " | ".join(str(r.get(key)) for r in runs) + " |")
    lines += ["", "## Goals", "", *goal_lines(runs)]
    lines += ["", "Per-run samples: `samples-maxsize<N>.csv` (t_s, in_flight, paused, rss_mb); figures: "
              "`run-maxsize<N>.json`. Plots (perf/kafka_plots.py): `inflight-maxsize<N>.png` (in-flight against the "
              "bound and thresholds, paused spans from the consumer_paused/consumer_resumed log events, and ten "
              "seconds zoomed), `lag-maxsize<N>.png` (bridge_consumer_lag per partition as the bridge reports it, "
              "and published minus committed from the producer's acknowledged offsets and the group's committed "
              "offsets); their series in `lag-`, `published-committed-` and `flow-maxsize<N>.csv`.", ""]
    (out / "summary.md").write_text("\n".join(lines))


DRAIN_GOAL_PER_S = 250  # the original system drained ~14 claims/s
PREDICT_P99_FACTOR = 2.0  # /predict p99 while a burst drains, against its idle value


def run_name(run: dict[str, Any]) -> str:
    return f"QUEUE_MAXSIZE={run['maxsize']}" + (f" ({run['label']})" if run.get("label") else "")


def goal_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The goals of the burst, run by run: the bound, the drain rate, /predict while it drains."""
    rows = []
    for run in runs:
        rows.append(["in flight never above QUEUE_MAXSIZE", run_name(run), f"max {run.get('in_flight_max')}",
                     "met" if run.get("within_bound") else "**missed**"])
        rate = run.get("drain_rate_per_s") or 0.0
        busy = "with /predict traffic" if run.get("predict_busy_count") else "no other traffic"
        rows.append([f"drain rate >= {DRAIN_GOAL_PER_S} claims/s", run_name(run), f"{rate} ({busy})",
                     verdict(DRAIN_GOAL_PER_S, rate)])
        idle, during = run.get("predict_idle_p99_ms"), run.get("predict_busy_p99_ms")
        if idle and during:
            rows.append([f"/predict p99 while draining <= {PREDICT_P99_FACTOR:g}x idle", run_name(run),
                         f"{idle} -> {during} ms ({during / idle:.2f}x)", verdict(during, PREDICT_P99_FACTOR * idle)])
    return markdown_table(["goal", "run", "this run", "verdict"], rows).splitlines()


def sample_gaps(path: Path) -> dict[str, Any]:
    """The sampler's own timing: it shares 2 cores with the whole stack, so say how regular it was."""
    if not path.exists():
        return {}
    with open(path) as handle:
        times = [float(row["t_s"]) for row in csv.DictReader(handle)]
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    if not gaps:
        return {}
    return {"sample_gap_p99_ms": round(gaps[int(len(gaps) * 0.99)] * 1000, 1),
            "gaps_over_100ms": sum(1 for gap in gaps if gap > 0.1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A burst of claims through the Kafka bridge.")
    parser.add_argument("--claims", type=int, default=None, help="claims published (default 10,000; --quick 2,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 claims (for `python -m perf --quick`)")
    parser.add_argument("--maxsize", default="40,512",
                        help="QUEUE_MAXSIZE for the bridge; comma-separated: one burst for each, in turn")
    parser.add_argument("--ttl-every", type=int, default=10,
                        help="every Nth claim carries a deadline 1 ms after publishing (the TTL subset; 0: none)")
    parser.add_argument("--workers", type=int, default=None,
                        help="QUEUE_WORKERS of the bulk node (split lanes; default: the cores less one beside /predict, "
                             "every core alone) or of the one node (shared lanes; default 2)")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--predict-idle-s", type=float, default=20.0,
                        help="how long /predict is probed idle (a p99 over ~1,500 answers, not ~300)")
    parser.add_argument("--no-api", dest="api", action="store_false", help="skip the /predict measurements")
    parser.add_argument("--alone", default="512",
                        help="QUEUE_MAXSIZE of the bursts also run without /predict traffic (comma-separated; the "
                             "bridge's own drain rate, labelled `alone`; empty: none)")
    parser.add_argument("--lanes", choices=("split", "shared"), default="split",
                        help="split: a worker node per lane (interactive: --interactive-workers processes; bulk: "
                             "--workers processes, and the bridge, at nice --bulk-nice); shared: one worker node "
                             "serving both lanes")
    parser.add_argument("--bulk-priority", choices=("idle", "nice", "normal"), default="idle",
                        help="CPU priority of the bulk lane (bulk worker node, bridge, S3 stand-in) when split: "
                             "SCHED_IDLE, --bulk-nice, or the same as the rest")
    parser.add_argument("--bulk-nice", type=int, default=10, help="CPU niceness of the bulk lane with --bulk-priority nice")
    parser.add_argument("--bulk-cpus", default="auto",
                        help="cores the bulk lane (split) runs on: auto (beside /predict, all but the first; "
                             "alone, any), all, or a list such as 1 or 2-7")
    parser.add_argument("--interactive-workers", type=int, default=1,
                        help="also run a worker on the interactive lane only, with this concurrency")
    parser.add_argument("--label", default="", help="suffix for this run's files and column")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    args.claims = args.claims or (2_000 if args.quick else 10_000)
    # One burst per bound, each on a stack of its own: with the /predict probe (unless --no-api), then
    # the --alone bounds without it. The probe is a back-to-back client on the interactive lane, which has
    # the CPU first: on two cores it takes much of what the bulk lane would drain with.
    runs = [(int(size), args.api, args.label) for size in str(args.maxsize).split(",") if size.strip()]
    alone_label = "-".join(part for part in (args.label, "alone") if part)
    runs += [(int(size), False, alone_label) for size in str(args.alone).split(",") if size.strip()]
    ok = True
    workers = args.workers
    for maxsize, api, label in runs:
        args.maxsize, args.api, args.label = maxsize, api, label
        args.workers = workers or default_workers(split=args.lanes == "split", beside_predict=api)
        with tempfile.TemporaryDirectory(prefix="kafka-burst-") as tmp:
            result = run(args, Path(tmp))
        out = results_dir(args.out)
        write(out, result)
        print(json.dumps(result, indent=2))
        print(f"written to {out}")
        ok = ok and result["within_bound"] and result["results_complete"] and result["committed_at_end"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
