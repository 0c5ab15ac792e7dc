"""The report of a load run with several endpoints (perf/locust_runs.py's `LoadRun`: `original`, `isolated`,
`overload`): its table by endpoint, failures, CPU and queue, its CSV files and its three plots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perf.locust_runs import QUEUE_INTERVAL_S, REDIS_DEPTH, LoadRun
from perf.measure import PERCENTILES, Responses
from perf.results import cores_text, counts, figure, markdown_table, ms, plot_percentiles, plot_statuses, save, style, write_csv
from perf.runs import Run

ENDPOINT_HEADERS = ["endpoint", "responses", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses",
                    "failures (by status)", "invalid bodies", "Locust's own p50 / p95 / p99 ms; failures"]


def echo_ratio_text(run: LoadRun, echo: Run, name: str = "/predict") -> str:
    s, e, rate = run.stats(name), echo.stats, run.throughput(name)
    return (f"{name}: {rate:.0f} responses/s = **{rate / max(echo.throughput, 1e-9):.2f}x** the echo baseline "
            f"({echo.throughput:.0f}/s); p50 {s['p50'] / e['p50']:.1f}x, p99 {s['p99'] / e['p99']:.1f}x the echo's latency")


def run_section(run: LoadRun) -> str:
    """A run's table by endpoint, its failures by message, who used the CPU and how deep the queue got."""
    own = {row["Name"]: row for row in run.locust_stats}
    rows = []
    for name, responses in run.endpoints.items():
        s, theirs = run.stats(name), own.get(name)
        rows.append([name, len(responses), f"{run.throughput(name):.0f}", *(ms(s[k]) for k in ("p50", "p95", "p99", "max")),
                     counts(responses.statuses()), counts(run.failures(name).statuses()), responses.broken(),
                     f"{theirs['50%']} / {theirs['95%']} / {theirs['99%']}; {theirs['Failure Count']} failures"
                     if theirs else "n/a"])
    failures: list[list[Any]] = ([[row["Name"], row["Error"][:160], row["Occurrences"]] for row in run.locust_failures]
                or [[name, detail[:160], n] for name in run.endpoints for detail, n in run.failures(name).details().most_common()])
    samples = sum(1 for _, values in run.queue if REDIS_DEPTH not in values)
    return "\n\n".join([
        f"### {run.title}",
        *(f"**{line}** (during or just after this run)" for line in run.exited),
        markdown_table(ENDPOINT_HEADERS, rows),
        "Failures by message:\n\n" + markdown_table(["endpoint", "message", "occurrences"], failures) if failures
        else "No failures (every answer a 200, or a 429/503 with the contract's body and Retry-After).",
        f"- client: {run.client}; cores used during the run: {cores_text(run.cores)}.\n"
        "- deepest queue: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(run.queue_max().items())) or "no sample")
        + f" ({samples} samples of the API's /metrics in {run.seconds} s); most requests awaiting an answer at once "
          f"(the client's count): {max((n for _, n in run.outstanding()), default=0):.0f}."])


def run_files(run: LoadRun) -> dict[str, str]:
    files = {f"{run.name}_{kind}.png": what for kind, what in (
        ("latency", "latency percentiles per second"), ("throughput", "answers per second and the queue"),
        ("status", "status codes per second"))}
    files[f"{run.name}_endpoints.csv, {run.name}_per_second.csv, {run.name}_queue.csv"] = "the figures and series"
    if run.locust_stats:
        files[f"{run.name}_locust_stats.csv, _stats_history.csv, _failures.csv, _exceptions.csv"] = "Locust's own CSVs"
    return files


def write_run_csvs(out: Path, run: LoadRun) -> None:
    """<name>_endpoints.csv (the figures), <name>_per_second.csv and <name>_queue.csv (the series)."""
    write_csv(out / f"{run.name}_endpoints.csv",
              ["endpoint", "responses", "throughput_per_s", *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "failures",
               "invalid_bodies", "statuses"],
              [[name, len(r), round(run.throughput(name), 1), *(round(run.stats(name)[f"p{p}"], 3) for p in PERCENTILES),
                round(run.stats(name)["max"], 3), len(run.failures(name)), r.broken(), counts(r.statuses())]
               for name, r in run.endpoints.items()])
    write_csv(out / f"{run.name}_per_second.csv",
              ["second", "endpoint", "responses", *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "statuses"],
              [[row["second"], name, row["responses"], *(row[f"p{p}_ms"] for p in PERCENTILES), row["max_ms"],
                " ".join(f"{code}:{n}" for code, n in sorted(row["statuses"].items()))]
               for name in run.endpoints for row in run.per_second(name)])
    write_csv(out / f"{run.name}_queue.csv", ["t_s", "series", "value"],
              [[round(t, 3), key, value] for t, values in run.queue for key, value in values.items()])


def plot_run(out: Path, run: LoadRun, goals_ms: Mapping[str, float] | None = None,
             latency: Mapping[str, Responses] | None = None) -> list[Path]:
    """<name>_latency.png (per endpoint, or per group of `latency`), <name>_throughput.png (with the queue)
    and <name>_status.png."""
    groups = latency or run.endpoints
    fig, axes = figure(len(groups), f"{run.title}: latency percentiles per second")
    for ax, (name, responses) in zip(axes, groups.items(), strict=True):
        plot_percentiles(ax, responses.per_second(run.seconds), name, (goals_ms or {}).get(name),
                         f"{name}: percentiles of the answers completed in each second ({run.client})")
    paths = [save(fig, out / f"{run.name}_latency.png")]

    fig, (t_ax, q_ax) = figure(2, f"{run.title}: throughput and queue over time")
    for name in run.endpoints:
        per = run.per_second(name)
        t_ax.plot([r["second"] for r in per], [r["responses"] - r["statuses"].get(0, 0) for r in per], marker="o",
                  markersize=2.5, label=f"{name}: {run.throughput(name):.0f} answers/s over the run")
        if len(run.endpoints[name].statuses()) > 1:
            t_ax.plot([r["second"] for r in per], [r["statuses"].get(200, 0) for r in per], linestyle="--", linewidth=1,
                      label=f"{name}: of which 200")
    if run.offered_per_s:
        t_ax.axhline(run.offered_per_s, color="grey", linestyle=":", label=f"offered {run.offered_per_s:.0f} req/s")
    style(t_ax, "answers per second by endpoint (by completion time; transport errors left out)",
          ylabel="responses / s", legend=None, bottom=0)
    handles, labels = t_ax.get_legend_handles_labels()
    if run.users:
        u_ax = t_ax.twinx()
        handles += u_ax.step([t for t, _ in run.users], [u for _, u in run.users], where="post", color="grey", alpha=0.6)
        labels.append("Locust users (right axis)")
        u_ax.set_ylabel("users")
        u_ax.set_ylim(bottom=0)
    t_ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    plot_queue(q_ax, run.queue, run.outstanding())
    paths.append(save(fig, out / f"{run.name}_throughput.png"))

    fig, axes = figure(len(run.endpoints), f"{run.title}: status codes per second")
    for ax, name in zip(axes, run.endpoints, strict=True):
        plot_statuses(ax, run.endpoints[name], f"{name}: responses per second by status code", run.seconds)
        if clip_outlier(ax, [row["responses"] for row in run.per_second(name)]):
            ax.legend(fontsize=8, loc="upper left")  # the clipped total is written at the top right
    paths.append(save(fig, out / f"{run.name}_status.png"))
    return paths


def clip_outlier(ax: Any, totals: Sequence[float]) -> bool:
    """When one second dwarfs the others (requests failed together at the end of a grace period), cut the y axis
    above the others and write the clipped totals on their bars."""
    ordered = sorted(totals)
    if len(ordered) < 5 or ordered[-1] <= 3 * max(ordered[-2], 1):
        return False
    top = 1.3 * max(ordered[-2], 1)
    ax.set_ylim(0, top)
    for second, total in enumerate(totals):
        if total > top:
            ax.annotate(f"{total:.0f} (clipped)", (second, top), xytext=(-4, -4), textcoords="offset points",
                        ha="right", va="top", fontsize=8)
    return True


def plot_queue(ax: Any, queue: Sequence[tuple[float, Mapping[str, float]]], outstanding: Sequence[tuple[float, float]]) -> None:
    """The queue gauges (left axis) and, on the right axis, the requests the client was waiting for."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, values in queue:
        for key, value in values.items():
            series[key].append((t, value))
    for key, points in sorted(series.items(), key=lambda item: item[0] == REDIS_DEPTH):
        ax.plot([t for t, _ in points], [v for _, v in points], marker=".", markersize=2, linewidth=1,
                linestyle=":" if key == REDIS_DEPTH else "-", label=key if key == REDIS_DEPTH else f"API /metrics: {key}")
    style(ax, f"queue depth, sampled every {QUEUE_INTERVAL_S * 1000:.0f} ms (a gap: the API did not answer /metrics in "
          "time)", ylabel="requests in the Redis queue", legend=None, bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    o_ax = ax.twinx()
    label = "requests awaiting an answer (the client's count: sent, or due if open loop; right axis)"
    handles += o_ax.plot([t for t, _ in outstanding], [n for _, n in outstanding], color="black", linewidth=1.2,
                         alpha=0.7, label=label)
    labels.append(label)
    o_ax.set_ylabel("requests outstanding")
    o_ax.set_ylim(bottom=0)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
