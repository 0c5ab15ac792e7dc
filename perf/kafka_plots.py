"""Plots and series of a Kafka burst run (perf/kafka_burst.py): in-flight claims with the pauses and
resumes, and the lag, two ways.

- `inflight-<run>.png`: `bridge_claims_in_flight` as sampled from the bridge's /metrics against
  QUEUE_MAXSIZE and the pause/resume thresholds, the paused intervals shaded from the bridge's
  `consumer_paused` / `consumer_resumed` log events; then ten seconds of the drain, zoomed, with each
  event marked and the `bridge_consumer_paused` gauge as sampled.
- `lag-<run>.png`: `bridge_consumer_lag` per partition as the bridge reports it (its end offset is the
  broker's; Tansu, the local broker, reports end offsets low, so this lag reads low), and "published
  minus committed" per partition: the producer's acknowledged offsets (exact, from the publish) minus
  the group's committed offsets (read with an admin client every 0.2 s, from the end of the publish).

All times are seconds since the in-flight sampler started, just before the first publish.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perf.common import figure, save
from settings import Settings

ZOOM_S = 10.0
PARTITION_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def burst_series(sampler: Any, published: Mapping[int, int], commits: Sequence[tuple[float, Mapping[int, int]]],
                 bridge: Any, started: float) -> dict[str, Any]:
    """What the plots need, on the sampler's clock (`sampler.started`): the bridge's offsets as sampled, its
    pause/resume log events, and (published, committed) per partition at each poll of the group's offsets.
    `published` is the producer's acknowledged end offsets, all in before the first poll."""
    flow = sorted((round(float(e["ts"]) - sampler.started_epoch, 3), name, e.get("depth"))
                  for name in ("consumer_paused", "consumer_resumed") for e in bridge.events(name))
    backlog = [(round(t - sampler.started, 3), partition, end, done.get(partition, 0))
               for t, done in commits for partition, end in sorted(published.items())]
    return {"offsets": list(sampler.offsets), "flow": flow, "backlog": backlog,
            "publish_started_s": round(started - sampler.started, 3),
            "end_s": sampler.rows[-1][0] if sampler.rows else 0.0}


def write_series(out: Path, name: str, series: Mapping[str, Any]) -> None:
    def write(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    write(out / f"lag-{name}.csv", ["t_s", "partition", "bridge_committed_offset", "bridge_end_offset",
                                    "bridge_consumer_lag"], series["offsets"])
    write(out / f"published-committed-{name}.csv", ["t_s", "partition", "published", "committed"], series["backlog"])
    write(out / f"flow-{name}.csv", ["t_s", "event", "depth"], series["flow"])


def paused_spans(flow: Sequence[tuple[float, str, Any]], end_s: float) -> list[tuple[float, float]]:
    spans, since = [], None
    for t, name, _ in flow:
        if name == "consumer_paused" and since is None:
            since = t
        elif name == "consumer_resumed" and since is not None:
            spans.append((since, t))
            since = None
    if since is not None:
        spans.append((since, end_s))
    return spans


def plot_inflight(out: Path, name: str, rows: Sequence[Sequence[float]], series: Mapping[str, Any], maxsize: int) -> Path:
    pause_pct, resume_pct = (Settings.model_fields[f"{kind}_threshold_pct"].default for kind in ("pause", "resume"))
    pause, resume = maxsize * pause_pct / 100, maxsize * resume_pct / 100
    times, in_flight, paused = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    end_s = times[-1] if times else 0.0
    flow = series["flow"]
    fig, (all_ax, zoom_ax) = figure(2, f"Kafka burst ({name}): claims in flight at the bridge, QUEUE_MAXSIZE={maxsize}")
    spans = paused_spans(flow, end_s)
    for ax in (all_ax, zoom_ax):
        ax.plot(times, in_flight, linewidth=0.8, color="tab:blue", zorder=3, label="bridge_claims_in_flight (every 50 ms)")
        ax.axhline(maxsize, color="red", linewidth=1, label=f"bound QUEUE_MAXSIZE {maxsize}")
        ax.axhline(pause, color="tab:orange", linestyle="--", linewidth=0.8,
                   label=f"pause at {pause_pct} % ({pause:g})")
        ax.axhline(resume, color="tab:green", linestyle="--", linewidth=0.8,
                   label=f"resume at {resume_pct} % ({resume:g})")
        for start, stop in spans:
            ax.axvspan(start, stop, color="tab:orange", alpha=0.15, linewidth=0)
        ax.set_ylabel("claims in flight")
        ax.set_xlabel("seconds since the first publish")
        ax.set_ylim(0, maxsize * 1.15)
        ax.grid(alpha=0.3)
    all_ax.axvspan(0, 0, color="tab:orange", alpha=0.15, label=f"paused ({len(spans)} spans, from the log events)")
    all_ax.set_title(f"the whole run: {sum(1 for e in flow if e[1] == 'consumer_paused')} consumer_paused, "
                     f"{sum(1 for e in flow if e[1] == 'consumer_resumed')} consumer_resumed", fontsize=10)
    all_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    middle = end_s / 2
    zoom = (max(0.0, middle - ZOOM_S / 2), min(end_s, middle + ZOOM_S / 2)) if end_s else (0.0, ZOOM_S)
    zoom_ax.set_xlim(*zoom)
    shown = [e for e in flow if zoom[0] <= e[0] <= zoom[1]]
    for t, event, _ in shown:
        zoom_ax.axvline(t, color="tab:orange" if event == "consumer_paused" else "tab:green", linewidth=0.8,
                        linestyle="-" if event == "consumer_paused" else ":")
    gauge = zoom_ax.twinx()
    gauge.step(times, paused, where="post", color="grey", linewidth=0.8, alpha=0.7)
    gauge.set_ylim(-0.05, 8)
    gauge.set_yticks([0, 1])
    gauge.set_ylabel("bridge_consumer_paused")
    zoom_ax.set_title(f"{zoom[1] - zoom[0]:.0f} s mid-drain: {len(shown)} events, solid orange = consumer_paused, dotted "
                      "green = consumer_resumed;\ngrey (right axis) = the bridge_consumer_paused gauge as sampled",
                      fontsize=9)
    return save(fig, out / f"inflight-{name}.png")


def plot_lag(out: Path, name: str, series: Mapping[str, Any]) -> Path:
    fig, (bridge_ax, ours_ax) = figure(2, f"Kafka burst ({name}): consumer lag, as the bridge reports it and as published "
                                          "minus committed")
    per_partition: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t, partition, _committed, _end, lag in series["offsets"]:
        per_partition[partition].append((t, lag))
    for points in per_partition.values():  # sampled only when they changed: hold the last value to the end
        points.append((max(series.get("end_s", 0.0), points[-1][0]), points[-1][1]))
    total = total_over_time({p: points for p, points in per_partition.items()})
    for partition, points in sorted(per_partition.items()):
        bridge_ax.step([t for t, _ in points], [v for _, v in points], where="post", linewidth=max(0.8, 2.6 - 0.5 * partition),
                       color=PARTITION_COLOURS[partition % len(PARTITION_COLOURS)], label=f"partition {partition}")
    bridge_ax.step([t for t, _ in total], [v for _, v in total], where="post", color="black", linewidth=1.4,
                   label="sum over partitions")
    bridge_ax.set_title("bridge_consumer_lag from the bridge's /metrics: the end offset as the broker reports it minus "
                        "the committed offset\n(Tansu, the local broker, reports end offsets low: this lag reads low)",
                        fontsize=9)
    backlog: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t, partition, published, committed in series["backlog"]:
        backlog[partition].append((t, published - committed))
    ours = total_over_time(backlog)
    for partition, points in sorted(backlog.items()):
        ours_ax.step([t for t, _ in points], [v for _, v in points], where="post", linewidth=max(0.8, 2.6 - 0.5 * partition),
                     color=PARTITION_COLOURS[partition % len(PARTITION_COLOURS)], label=f"partition {partition}")
    ours_ax.step([t for t, _ in ours], [v for _, v in ours], where="post", color="black", linewidth=1.4,
                 label="sum over partitions")
    ours_ax.step([t for t, _ in total], [v for _, v in total], where="post", color="black", linewidth=1, linestyle=":",
                 label="sum of bridge_consumer_lag (above), for comparison")
    ours_ax.set_title("published minus committed: the producer's acknowledged offsets minus the group's committed "
                      "offsets\n(read with an admin client every 0.2 s from the end of the publish)", fontsize=9)
    for ax in (bridge_ax, ours_ax):
        ax.set_xlabel("seconds since the first publish")
        ax.set_ylabel("records")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    return save(fig, out / f"lag-{name}.png")


def total_over_time(per_partition: Mapping[int, Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The sum over partitions, each holding its last value, at every time any of them changed."""
    changes = sorted((t, p, v) for p, points in per_partition.items() for t, v in points)
    current: dict[int, float] = {}
    total = []
    for t, partition, value in changes:
        current[partition] = value
        total.append((t, sum(current.values())))
    return total
