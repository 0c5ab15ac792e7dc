"""The report of kafka-burst (perf/kafka_burst.py): `inflight-<run>.png` (in flight against the bound and the
pause/resume thresholds, paused spans from the bridge's log events, ten seconds zoomed), `lag-<run>.png`
(`bridge_consumer_lag` per partition, and published minus committed offsets), and the summary of every run in
the day's folder. Times are seconds since the in-flight sampler started, just before the first publish.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perf import results
from perf.measure import percentile
from perf.results import figure, save, style, verdict
from settings import Settings

ZOOM_S = 10.0
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
DRAIN_GOAL_PER_S = 250  # the original system drained ~14 claims/s
PREDICT_P99_FACTOR = 2.0  # /predict p99 while a burst drains, against its idle value
FIELDS = [
    ("claims", "claims published"), ("lanes", "worker lanes"), ("bulk_nice", "bulk lane CPU priority"),
    ("bulk_cpus", "bulk lane cores"), ("interactive_workers", "interactive-only worker processes"),
    ("workers", "bulk-lane worker processes (split) or all (shared)"), ("samples", "in-flight samples"),
    ("sample_interval_ms_max", "longest gap between samples (ms)"), ("sample_gap_p99_ms", "p99 gap between samples (ms)"),
    ("gaps_over_100ms", "gaps over 100 ms"), ("in_flight_max", "max in-flight (sampled)"),
    ("enqueued_depth_max", "max in-flight (logged per claim)"), ("within_bound", "never above the bound"),
    ("pauses", "consumer_paused"), ("resumes", "consumer_resumed"), ("publish_s", "publish time (s)"),
    ("drain_s", "publish to fully committed (s)"), ("drain_rate_per_s", "drain rate (claims/s)"),
    ("computed_rate_per_s", "of which computed (claims/s)"), ("rss_idle_mb", "bridge RSS idle (MB)"),
    ("rss_peak_mb", "bridge RSS peak (MB)"), ("rss_growth_mb", "RSS growth (MB)"), ("results_stored", "result objects"),
    ("ttl_claims", "claims published with ttl_ms=1"), ("ttl_expired_logged", "of them logged ttl_expired"),
    ("ttl_computed", "of them computed"),
    ("results_complete", "every live claim has a result, every expired one is logged and has none"),
    ("computed_twice", "claims computed twice"), ("committed_at_end", "committed offsets at the ends"),
    ("predict_idle_p50_ms", "/predict p50 idle (ms)"), ("predict_idle_p99_ms", "/predict p99 idle (ms)"),
    ("predict_busy_p50_ms", "/predict p50 during burst (ms)"), ("predict_busy_p99_ms", "/predict p99 during burst (ms)"),
    ("predict_busy_count", "/predict during burst"), ("predict_busy_errors", "/predict errors during burst"),
    ("predict_busy_statuses", "/predict statuses"), ("api_alive_at_end", "API alive at the end"),
]


def paused_spans(flow: Sequence[tuple[float, str, Any]], end_s: float) -> list[tuple[float, float]]:
    spans, since = [], None
    for t, name, _ in flow:
        if name == "consumer_paused" and since is None:
            since = t
        elif name == "consumer_resumed" and since is not None:
            spans.append((since, t))
            since = None
    return spans + ([(since, end_s)] if since is not None else [])


def plot_inflight(out: Path, name: str, rows: Sequence[Sequence[float]], series: Mapping[str, Any], maxsize: int) -> None:
    pause_pct, resume_pct = (Settings.model_fields[f"{kind}_threshold_pct"].default for kind in ("pause", "resume"))
    pause, resume = maxsize * pause_pct / 100, maxsize * resume_pct / 100
    times, in_flight, paused = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    end_s, flow = (times[-1] if times else 0.0), series["flow"]
    fig, (all_ax, zoom_ax) = figure(2, f"Kafka burst ({name}): claims in flight at the bridge, QUEUE_MAXSIZE={maxsize}")
    spans = paused_spans(flow, end_s)
    for ax in (all_ax, zoom_ax):
        ax.plot(times, in_flight, linewidth=0.8, color="tab:blue", zorder=3, label="bridge_claims_in_flight (every 50 ms)")
        ax.axhline(maxsize, color="red", linewidth=1, label=f"bound QUEUE_MAXSIZE {maxsize}")
        ax.axhline(pause, color="tab:orange", linestyle="--", linewidth=0.8, label=f"pause at {pause_pct} % ({pause:g})")
        ax.axhline(resume, color="tab:green", linestyle="--", linewidth=0.8, label=f"resume at {resume_pct} % ({resume:g})")
        for start, stop in spans:
            ax.axvspan(start, stop, color="tab:orange", alpha=0.15, linewidth=0)
        ax.set_ylim(0, maxsize * 1.15)
    all_ax.axvspan(0, 0, color="tab:orange", alpha=0.15, label=f"paused ({len(spans)} spans, from the log events)")
    events = Counter(event for _, event, _ in flow)
    style(all_ax, f"the whole run: {events['consumer_paused']} consumer_paused, {events['consumer_resumed']} "
          "consumer_resumed", "seconds since the first publish", "claims in flight", below=3)
    zoom = (max(0.0, end_s / 2 - ZOOM_S / 2), min(end_s, end_s / 2 + ZOOM_S / 2)) if end_s else (0.0, ZOOM_S)
    zoom_ax.set_xlim(*zoom)
    shown = [e for e in flow if zoom[0] <= e[0] <= zoom[1]]
    for t, event, _ in shown:
        pausing = event == "consumer_paused"
        zoom_ax.axvline(t, color="tab:orange" if pausing else "tab:green", linewidth=0.8, linestyle="-" if pausing else ":")
    gauge = zoom_ax.twinx()
    gauge.step(times, paused, where="post", color="grey", linewidth=0.8, alpha=0.7)
    gauge.set_ylim(-0.05, 8)
    gauge.set_yticks([0, 1])
    gauge.set_ylabel("bridge_consumer_paused")
    zoom_ax.set_title(f"{zoom[1] - zoom[0]:.0f} s mid-drain: {len(shown)} events, solid orange = consumer_paused, dotted "
                      "green = consumer_resumed;\ngrey (right axis) = the bridge_consumer_paused gauge as sampled", fontsize=9)
    style(zoom_ax, "", "seconds since the first publish", "claims in flight", legend=None)
    save(fig, out / f"inflight-{name}.png")


def total_over_time(per_partition: Mapping[int, Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The sum over partitions, each holding its last value, at every time any of them changed."""
    current: dict[int, float] = {}
    total = []
    for t, partition, value in sorted((t, p, v) for p, points in per_partition.items() for t, v in points):
        current[partition] = value
        total.append((t, sum(current.values())))
    return total


def plot_lag(out: Path, name: str, series: Mapping[str, Any]) -> None:
    fig, (bridge_ax, ours_ax) = figure(2, f"Kafka burst ({name}): consumer lag, as the bridge reports it and as published "
                                          "minus committed")
    reported: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t, partition, _committed, _end, lag in series["offsets"]:
        reported[partition].append((t, lag))
    for points in reported.values():  # sampled only when they changed: hold the last value to the end
        points.append((max(series.get("end_s", 0.0), points[-1][0]), points[-1][1]))
    backlog: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t, partition, published, committed in series["backlog"]:
        backlog[partition].append((t, published - committed))
    total = total_over_time(reported)
    for ax, per_partition in ((bridge_ax, reported), (ours_ax, backlog)):
        for partition, points in sorted(per_partition.items()):
            ax.step([t for t, _ in points], [v for _, v in points], where="post", linewidth=max(0.8, 2.6 - 0.5 * partition),
                    color=COLOURS[partition % len(COLOURS)], label=f"partition {partition}")
        summed = total_over_time(per_partition)
        ax.step([t for t, _ in summed], [v for _, v in summed], where="post", color="black", linewidth=1.4,
                label="sum over partitions")
    ours_ax.step([t for t, _ in total], [v for _, v in total], where="post", color="black", linewidth=1, linestyle=":",
                 label="sum of bridge_consumer_lag (above), for comparison")
    bridge_ax.set_title("bridge_consumer_lag from the bridge's /metrics: the end offset as the broker reports it minus "
                        "the committed offset\n(Tansu, the local broker, reports end offsets low: this lag reads low)", fontsize=9)
    ours_ax.set_title("published minus committed: the producer's acknowledged offsets minus the group's committed "
                      "offsets\n(read with an admin client every 0.2 s from the end of the publish)", fontsize=9)
    for ax in (bridge_ax, ours_ax):
        style(ax, "", "seconds since the first publish", "records", bottom=0)
    save(fig, out / f"lag-{name}.png")


def sample_gaps(path: Path) -> dict[str, Any]:
    """The sampler's own timing: it shares 2 cores with the whole stack, so say how regular it was."""
    gaps = np.diff(np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, ndmin=1)) if path.exists() else np.array([])
    if not gaps.size:
        return {}
    return {"sample_gap_p99_ms": round(percentile(gaps, 99) * 1000, 1), "gaps_over_100ms": int((gaps > 0.1).sum())}


def run_name(run: Mapping[str, Any]) -> str:
    return f"QUEUE_MAXSIZE={run['maxsize']}" + (f" ({run['label']})" if run.get("label") else "")


def goal_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The goals of the burst, run by run: the bound, the drain rate, /predict while it drains."""
    rows = []
    for run in runs:
        rate = run.get("drain_rate_per_s") or 0.0
        busy = "with /predict traffic" if run.get("predict_busy_count") else "no other traffic"
        rows += [["in flight never above QUEUE_MAXSIZE", run_name(run), f"max {run.get('in_flight_max')}",
                  "met" if run.get("within_bound") else "**missed**"],
                 [f"drain rate >= {DRAIN_GOAL_PER_S} claims/s", run_name(run), f"{rate} ({busy})", verdict(DRAIN_GOAL_PER_S, rate)]]
        idle, during = run.get("predict_idle_p99_ms"), run.get("predict_busy_p99_ms")
        if idle and during:
            rows.append([f"/predict p99 while draining <= {PREDICT_P99_FACTOR:g}x idle", run_name(run),
                         f"{idle} -> {during} ms ({during / idle:.2f}x)", verdict(during, PREDICT_P99_FACTOR * idle)])
    return rows


def write_summary(out: Path, info: Mapping[str, Any], doc: str | None) -> None:
    """summary.md from every run-maxsize<N>.json (and its samples CSV) in `out`."""
    runs = sorted((json.loads(path.read_text()) for path in out.glob("run-maxsize*.json")),
                  key=lambda r: (r["maxsize"], r.get("label") or ""))
    for each in runs:
        each.update(sample_gaps(out / f"samples-maxsize{each['maxsize']}{'-' + each['label'] if each.get('label') else ''}.csv"))
    servers = ", ".join(dict.fromkeys(run.get("s3_server", "moto") for run in runs))
    results.write_summary(out, "kafka-burst: a burst of claims through the bridge", info, doc, [
        f"Each run: its own Redis, S3 server ({servers}), Tansu broker, the Celery workers (split "
        "lanes: an interactive node, and a bulk node of QUEUE_WORKERS processes which, with the bridge and the S3 "
        "stand-in and Kafka broker that only the bulk lane uses, runs at the bulk lane's CPU priority and on its "
        "cores), the bridge and the API; N claims published at once on a 4-partition topic, each claim scoring the "
        "256-row demo Parquet file. In-flight and RSS (MiB) sampled every 50 ms from the bridge's /metrics and /proc by "
        "a process of its own. Drain rate: N over the time from the first publish until every partition's committed "
        "offset reached its end. /predict: one client, back to back.",
        results.markdown_table(["", *(run_name(r) for r in runs)], [[label, *(str(r.get(key)) for r in runs)] for key, label in FIELDS]),
        "## Goals\n\n" + results.markdown_table(["goal", "run", "this run", "verdict"], goal_rows(runs))],
        {"samples-<run>.csv": "t_s, in_flight, paused, rss_mb, per run `<run>` (maxsize<N>[-label])",
         "run-<run>.json": "the figures", "inflight-<run>.png, lag-<run>.png": "the plots",
         "lag-<run>.csv, published-committed-<run>.csv, flow-<run>.csv": "their series"})
