"""Scenario `kafka-burst` (issue 5): a burst of claims through the Kafka bridge, once per QUEUE_MAXSIZE with /predict
probed meanwhile, then `--alone` without it: in flight against the bound, pauses and resumes, the drain rate, the
results and committed offsets, and /predict latency idle and while the burst drains."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer

from devtools.processes import PYTHON, ManagedProcess, http_ok
from perf.kafka_plots import plot_inflight, plot_lag, write_summary
from perf.measure import Responses, Sampler, metrics_and_rss, percentile, rss_bytes
from perf.results import begin, write_csv
from perf.runs import by_quick, loadgen, run_client, scenario_parser
from perf.stack import Stack, cpu_list, pin
from settings import Settings
from tasks.demo_model import SAMPLE_KEY
from tasks.storage import ObjectStore

PARTITIONS = 4
TTL_EVERY = 10  # every 10th claim expires 1 ms after publishing: the TTL subset
TIMEOUT_S = 900
PREDICT_IDLE_S = 20.0  # /predict probed idle: a p99 over ~1,500 answers
BULK_NICE = 10  # the bulk lane's niceness with --bulk-priority nice
SAMPLE_INTERVAL_S = 0.05
MIB = 2**20
_GAUGES = re.compile(r"^(bridge_claims_in_flight|bridge_consumer_paused) (\S+)$", re.MULTILINE)
_OFFSETS = re.compile(r"^bridge_(committed_offset|end_offset|consumer_lag)\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABELS = re.compile(r'(\w+)="([^"]*)"')


def bridge_figures(text: str, topic: str) -> tuple[float, float, dict[int, tuple[float, ...]]]:
    """The bridge's in-flight gauge, paused flag, and committed offset, end offset and lag per partition of `topic`,
    from its /metrics text."""
    gauges = dict(_GAUGES.findall(text))
    offsets: dict[int, dict[str, float]] = {}
    for name, labels, value in _OFFSETS.findall(text):
        label = dict(_LABELS.findall(labels))
        if label.get("topic") == topic:
            offsets.setdefault(int(label["partition"]), {})[name] = float(value)
    return (float(gauges.get("bridge_claims_in_flight", 0)), float(gauges.get("bridge_consumer_paused", 0)),
            {p: tuple(v.get(key, 0.0) for key in ("committed_offset", "end_offset", "consumer_lag")) for p, v in sorted(offsets.items())})


def expiring(prefix: str, count: int, ttl_every: int) -> set[str]:
    """The claims published with `deadline_ms` 1 ms after publishing: every `ttl_every`-th (none when 0)."""
    return {f"{prefix}-{i}" for i in range(count) if ttl_every and i % ttl_every == ttl_every - 1}


def publish(kafka: str, topic: str, prefix: str, count: int, bucket: str, expired: set[str]) -> dict[int, int]:
    """The claims, acknowledged; the end offset of each partition."""
    producer = KafkaProducer(bootstrap_servers=kafka, linger_ms=20, batch_size=262144)
    deadline = [("deadline_ms", str(int(time.time() * 1000) + 1).encode())]
    try:
        futures = [producer.send(topic, key=f"{prefix}-{i}".encode(), partition=i % PARTITIONS,
                                 value=json.dumps({"claim_id": f"{prefix}-{i}", "bucket": bucket,
                                                   "object_key": SAMPLE_KEY}).encode(),
                                 headers=deadline if f"{prefix}-{i}" in expired else None) for i in range(count)]
        producer.flush(120)
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.get(timeout=60)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close()


def default_workers(*, split: bool, beside_predict: bool) -> int:
    """The bulk node's processes. Split lanes beside /predict: the cores less one (SCHED_IDLE yields the CPU to a
    waking task only at the next reschedule; with a core left over, the interactive lane wakes on it at once).
    Alone: every core. Shared lanes: 2."""
    if not split:
        return 2
    cores = len(os.sched_getaffinity(0))
    return max(1, cores - 1) if beside_predict else cores


def predict_figures(responses: Responses, name: str) -> dict[str, Any]:
    """p50/p99 of the valid 200s, how many, the transport errors and the statuses."""
    latency = responses.latency_ms[responses.ok]
    figures: dict[str, Any] = {f"predict_{name}_p{p}_ms": round(percentile(latency, p), 2) if len(latency) else None
                               for p in (50, 99)}
    if name == "busy":
        figures.update(predict_busy_count=int(latency.size), predict_busy_errors=int((responses.status == 0).sum()),
                       predict_busy_statuses=dict(Counter(str(s) if s else f"error {d[:40]}"
                                                          for s, d in zip(responses.status, responses.detail, strict=True))))
    return figures


def run(args: argparse.Namespace, raw: Path, maxsize: int, api: bool, label: str, workers: int) -> dict[str, Any]:
    split = args.lanes == "split"
    topic = f"claims-{uuid.uuid4().hex[:6]}"
    group = f"burst-{topic}"
    env = {"KAFKA_TOPIC_CLAIMS": topic, "KAFKA_TOPIC_DLQ": f"{topic}.dlq", "KAFKA_GROUP_ID": group,
           "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS), "QUEUE_MAXSIZE": str(maxsize), "QUEUE_WORKERS": str(workers)}
    # The bulk lane's CPU priority: SCHED_IDLE (runs only on CPU time nothing else wants) or a niceness; and its
    # cores: beside /predict, all but the first.
    prioritised = split and args.bulk_priority != "normal"
    idle = prioritised and args.bulk_priority == "idle"
    prefix = (["chrt", "--idle", "0"] if idle else ["nice", "-n", str(BULK_NICE)]) if prioritised else []
    cpus = cpu_list(args.bulk_cpus) if split and (api or args.bulk_cpus != "auto") else set()
    cpu_names = ",".join(map(str, sorted(cpus)))
    if cpus:
        prefix = ["taskset", "--cpu-list", cpu_names, *prefix]
    name = f"maxsize{maxsize}" + (f"-{label}" if label else "")
    with Stack(raw / f"logs-{name}", workers=0, api=False, kafka=True, env=env) as stack:
        assert stack.kafka is not None
        # Here the S3 stand-in and the broker serve only the bulk lane (in a deployment they are machines of their
        # own): the bulk lane's priority and cores for every thread of theirs.
        for service in (stack.s3.process, stack.kafka.process):
            if service is not None and (cpus or prioritised):
                pin(service.pid, cpus, idle=idle, nice=BULK_NICE if prioritised and not idle else 0)
        settings = Settings.model_validate({"redis_url": stack.redis_url, "s3_endpoint": stack.s3.address})
        if split:
            worker = stack.add_worker("bulk", "-Q", settings.celery_batch_queue, prefix=prefix)
            stack.add_worker("interactive", "-Q", settings.celery_queue, "--concurrency=1")
        else:
            worker = stack.add_worker("worker")
        bridge = stack.add(ManagedProcess("bridge", [*prefix, PYTHON, "-m", "bridge"], stack.env, stack.log_dir))
        url = f"http://127.0.0.1:{stack.env['BRIDGE_METRICS_PORT']}"
        bridge.wait_for(lambda: http_ok(f"{url}/readyz"), 60, "bridge /readyz")
        figures: dict[str, Any] = {}
        if api:
            stack.start_api()
            probe = ["--path", "/predict", "--keepalive", "--interval-ms", "10"]  # the next request 10 ms after each answer
            run_client("probe", stack.port, raw / f"predict-idle-{name}.csv", timeout_s=PREDICT_IDLE_S + 30,
                       args=[*probe, "--duration-s", str(PREDICT_IDLE_S)])
            figures.update(predict_figures(Responses.read(raw / f"predict-idle-{name}.csv"), "idle"))
        with Sampler(partial(rss_bytes, bridge.pid), 0.1) as memory:
            time.sleep(1.0)
        idle_rss = statistics.median(value / MIB for value in memory.values())
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka.address)
        busy = loadgen("probe", stack.port, raw / f"predict-busy-{name}.csv", raw,
                       [*probe, "--duration-s", str(TIMEOUT_S)]) if api else None
        prefix_id = f"b{uuid.uuid4().hex[:6]}"
        expired = expiring(prefix_id, args.claims, TTL_EVERY)
        commits: list[tuple[float, dict[int, int]]] = []
        final: dict[int, int] = {}
        with Sampler(partial(metrics_and_rss, f"{url}/metrics", bridge.pid), SAMPLE_INTERVAL_S, process=True) as sampler, \
                (busy or contextlib.nullcontext()):
            print(f"publishing {args.claims} claims (QUEUE_MAXSIZE={maxsize}) ...", flush=True)
            started = time.monotonic()
            ends = publish(stack.kafka.address, topic, prefix_id, args.claims, settings.bucket_processed, expired)
            published_s = time.monotonic() - started
            while time.monotonic() < started + TIMEOUT_S and final != ends:
                offsets = admin.list_group_offsets(group).get(group, {})
                final = {tp.partition: mark.offset for tp, mark in offsets.items() if tp.topic == topic}
                commits.append((time.monotonic(), final))
                if not (bridge.alive() and worker.alive()):
                    raise RuntimeError(f"a process exited during the burst:\n{bridge.output()[-2000:]}")
                time.sleep(0.2 * (final != ends))
            drained_s = time.monotonic() - started
        admin.close()
        if busy is not None:
            figures.update(predict_figures(Responses.read(raw / f"predict-busy-{name}.csv"), "busy"))
        listed = ObjectStore(settings).client.list_objects(settings.bucket_logs, prefix=f"claims/{prefix_id}-", recursive=True)
        stored = {obj.object_name.removeprefix("claims/").removesuffix(".json") for obj in listed}
        expired_logged = {e["key"] for e in bridge.events("ttl_expired") if e.get("key") in expired}
        computed = Counter(e["claim_id"] for e in worker.events("predict_inference_start") if e.get("claim_id"))
        sampled = [(t, *bridge_figures(text, topic), round(rss / MIB, 2)) for t, (text, rss) in sampler.samples]
        rows = [(t, in_flight, paused, rss) for t, in_flight, paused, _, rss in sampled]
        flow = sorted((round(float(e["ts"]) - sampler.t0_epoch, 3), event, e.get("depth"))
                      for event in ("consumer_paused", "consumer_resumed") for e in bridge.events(event))
        in_flight = [row[1] for row in rows]
        rss = [row[3] for row in rows]
        drained = final == ends
        return {
            "claims": args.claims, "maxsize": maxsize, "workers": workers, "partitions": PARTITIONS,
            "s3_server": stack.s3.server, "label": label, "lanes": args.lanes,
            "bulk_nice": (args.bulk_priority if args.bulk_priority != "nice" else f"nice {BULK_NICE}") if split else "normal",
            "bulk_cpus": cpu_names or "any", "interactive_workers": 1 if split else 0,
            "samples": len(rows),
            "sample_interval_ms_max": round(max((b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)), default=0) * 1000, 1),
            "in_flight_max": max(in_flight, default=0), "within_bound": max(in_flight, default=0) <= maxsize,
            "enqueued_depth_max": max((e["depth"] for e in bridge.events("queue_enqueued")), default=0),
            "pauses": len(bridge.events("consumer_paused")), "resumes": len(bridge.events("consumer_resumed")),
            "publish_s": round(published_s, 2), "drain_s": round(drained_s, 2),
            "drain_rate_per_s": round(args.claims / drained_s, 1) if drained else None,
            "computed_rate_per_s": round((args.claims - len(expired)) / drained_s, 1) if drained else None,
            "rss_idle_mb": round(idle_rss, 1), "rss_peak_mb": round(max(rss, default=idle_rss), 1),
            "rss_growth_mb": round(max(rss, default=idle_rss) - idle_rss, 1),
            "results_stored": len(stored), "ttl_claims": len(expired), "ttl_expired_logged": len(expired_logged),
            "ttl_computed": len(stored & expired),
            "results_complete": stored == {f"{prefix_id}-{i}" for i in range(args.claims)} - expired and expired_logged == expired,
            "computed_twice": sum(1 for n in computed.values() if n > 1),
            "ends": {str(k): v for k, v in sorted(ends.items())},
            "committed": {str(k): v for k, v in sorted(final.items())}, "committed_at_end": drained,
            **{key: None for key in ("predict_idle_p50_ms", "predict_idle_p99_ms", "predict_busy_p50_ms", "predict_busy_p99_ms")},
            "predict_busy_count": 0, "predict_busy_errors": 0, "predict_busy_statuses": {}, **figures,
            "api_alive_at_end": stack.api.alive() if api else None,
            "_rows": rows,
            "_series": {"offsets": changes([(t, offsets) for t, _, _, offsets, _ in sampled]), "flow": flow,
                        "backlog": [(round(t - sampler.t0, 3), partition, end, done.get(partition, 0))
                                    for t, done in commits for partition, end in sorted(ends.items())],
                        "publish_started_s": round(started - sampler.t0, 3), "end_s": rows[-1][0] if rows else 0.0},
        }


def changes(samples: list[tuple[float, Any]]) -> list[tuple[float, int, float, float, float]]:
    """(t, partition, committed, end, lag) whenever a partition's offsets changed (the bridge refreshes them once a
    second)."""
    last: dict[int, tuple[float, float, float]] = {}
    found = []
    for t, offsets in samples:
        for partition, row in offsets.items():
            if last.get(partition) != row:
                last[partition] = row
                found.append((t, partition, *row))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("kafka-burst", __doc__, "2,000 claims", workers=0)
    parser.add_argument("--claims", type=int, default=None, help="claims published (default 10,000; --quick 2,000)")
    parser.add_argument("--maxsize", default="40,512", help="QUEUE_MAXSIZE, comma-separated: one burst for each")
    parser.add_argument("--workers", type=int, default=None,
                        help="QUEUE_WORKERS of the bulk node (split; default: the cores less one beside /predict, every "
                             "core alone) or of the one node (shared; default 2)")
    parser.add_argument("--alone", default="512", help="QUEUE_MAXSIZE of the bursts also run without /predict traffic")
    parser.add_argument("--lanes", choices=("split", "shared"), default="split",
                        help="split: a worker node per lane; shared: one worker node serving both lanes")
    parser.add_argument("--bulk-priority", choices=("idle", "nice", "normal"), default="idle",
                        help="CPU priority of the bulk lane (split): SCHED_IDLE, niceness 10, or the same as the rest")
    parser.add_argument("--bulk-cpus", default="auto",
                        help="cores of the bulk lane (split): auto (beside /predict, all but the first; alone, any), all, "
                             "or a list such as 1 or 2-7")
    parser.add_argument("--label", default="", help="suffix for this run's files and column")
    args = parser.parse_args(argv)
    by_quick(args, claims=(10_000, 2_000))
    runs = [(int(size), True, args.label) for size in args.maxsize.split(",") if size.strip()]
    runs += [(int(size), False, "-".join(part for part in (args.label, "alone") if part))
             for size in args.alone.split(",") if size.strip()]
    info, out, raw = begin("kafka-burst", fresh=False)  # the day's folder gathers every run, variants included
    ok = True
    for maxsize, api, label in runs:
        workers = args.workers or default_workers(split=args.lanes == "split", beside_predict=api)
        result = run(args, raw, maxsize, api, label, workers)
        rows, series = result.pop("_rows"), result.pop("_series")
        name = f"maxsize{maxsize}" + (f"-{label}" if label else "")
        write_csv(out / f"samples-{name}.csv", ["t_s", "in_flight", "paused", "rss_mb"], rows)
        write_csv(out / f"lag-{name}.csv", ["t_s", "partition", "bridge_committed_offset", "bridge_end_offset",
                                            "bridge_consumer_lag"], series["offsets"])
        write_csv(out / f"published-committed-{name}.csv", ["t_s", "partition", "published", "committed"], series["backlog"])
        write_csv(out / f"flow-{name}.csv", ["t_s", "event", "depth"], series["flow"])
        plot_inflight(out, name, rows, series, maxsize)
        plot_lag(out, name, series)
        (out / f"run-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        write_summary(out, info, __doc__)
        print(json.dumps(result, indent=2))
        ok = ok and result["within_bound"] and result["results_complete"] and result["committed_at_end"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
