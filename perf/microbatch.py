"""Scenario `microbatch`: /predict at saturation with micro-batching on and off, at 64 and 256 connections.

Issue 4, "what must hold" item 1. Two stacks, one after the other, identical but for
`ENABLE_MICROBATCH` (first `true`, then `false`); against each, the same closed-loop client
(`perf.loadgen load`: every connection sends its next request as soon as the previous answer is
complete) at each concurrency in turn, for `--duration-s`. The goal is a throughput ratio on/off of
at least 3x at each concurrency, with p99 reported: throughput counts valid 200s, since at 256
connections the server's backlog bound refuses part of the requests with 429s, which are fast and
would otherwise count as throughput.

The batch-size distribution (batching on) is read two ways for each run: exactly, from the API's
`batch_sent` log events written during the run (each carries `batch_size`), and from the API's
/metrics histogram `inference_batch_size{stage="api"}` scraped before and after (a cross-check; its
buckets are coarser). HTTP_THREADS stays at its default unless `--threads` says otherwise: with
more connections than threads, the extra connections wait in waitress's queue, so the threads bound
how many requests the micro-batcher can gather at once (see the summary).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import requests

from perf.common import (
    PERCENTILES,
    CpuMeter,
    Responses,
    Stack,
    figure,
    log_events,
    log_size,
    machine_info,
    machine_markdown,
    markdown_table,
    ms,
    plot_percentiles,
    plot_statuses,
    results_dir,
    run_client,
    save,
    stop_on_sigterm,
    write_csv,
)
from perf.http_bench import Run, warm_up

GOAL_RATIO = 3.0
MODES = (("on", "true"), ("off", "false"))
HISTOGRAM = "inference_batch_size"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario microbatch", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s runs instead of 20 s")
    parser.add_argument("--duration-s", type=float, default=None, help="length of each run (default 20, --quick 8)")
    parser.add_argument("--warmup-s", type=float, default=None, help="left out of the figures (default 2, --quick 1)")
    parser.add_argument("--concurrency", default="64,256", help="comma-separated connection counts")
    parser.add_argument("--threads", type=int, default=32, help="HTTP_THREADS of each API process")
    parser.add_argument("--processes", type=int, default=2, help="HTTP_PROCESSES: API processes on the port")
    parser.add_argument("--workers", type=int, default=2, help="QUEUE_WORKERS (pool processes of the worker)")
    parser.add_argument("--label", default="", help="results in ...-microbatch-<label>/ (a variant next to the default run)")
    args = parser.parse_args(argv)
    args.duration_s = args.duration_s or (8.0 if args.quick else 20.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 2.0)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.warmup_s >= args.duration_s:
        parser.error("--warmup-s must be shorter than --duration-s")
    if args.label and not args.label.replace("-", "").isalnum():
        parser.error("--label takes letters, digits and dashes")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency needs positive connection counts")
    return args


# -- the API's batch-size histogram ----------------------------------------------------------------


def batch_histogram(url: str) -> dict[str, float]:
    """Cumulative bucket counts (`le` -> count), `_count` and `_sum` of inference_batch_size{stage="api"}."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    text = requests.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.labels.get("stage") != "api":
                continue
            if sample.name.endswith("_bucket"):
                found[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                found["count"] = sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] = sample.value
    return found


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, int]]:
    """Batches per bucket (not cumulative) sent between two scrapes, as ("<= le", count) rows."""
    bounds = sorted((k for k in after if k not in ("count", "sum")), key=lambda k: float(k))
    rows, previous = [], 0.0
    for bound in bounds:
        cumulative = after[bound] - before.get(bound, 0.0)
        label = "+Inf" if bound == "+Inf" else f"{float(bound):g}"
        rows.append((label, int(round(cumulative - previous))))
        previous = cumulative
    return rows


# -- one run -----------------------------------------------------------------------------------------


class BatchRun:
    """One client run against one stack, with the batches the API sent meanwhile."""

    def __init__(self, mode: str, connections: int, run: Run, batches: list[int],
                 histogram: list[tuple[str, int]]) -> None:
        self.mode, self.connections, self.run = mode, connections, run
        self.batches, self.histogram = batches, histogram

    @property
    def label(self) -> str:
        return f"batching {self.mode}, {self.connections} conn"

    def batch_stats(self) -> dict[str, Any]:
        if not self.batches:
            return {"batches": 0}
        sizes = np.asarray(self.batches)
        return {"batches": int(sizes.size), "requests": int(sizes.sum()), "mean": float(sizes.mean()),
                "p50": float(np.percentile(sizes, 50)), "p90": float(np.percentile(sizes, 90)), "max": int(sizes.max())}


def measure(args: argparse.Namespace, raw: Path, stack: Stack, mode: str, connections: int, n_features: int) -> BatchRun:
    name = f"predict-{mode}-{connections}"
    print(f"microbatch: batching {mode}, {connections} connections for {args.duration_s:g} s", flush=True)
    roots = {"api": stack.api.pid, **{w.name: w.pid for w in stack.workers},
             "redis": stack.services[0].process.pid}  # type: ignore[union-attr]
    before, offset = batch_histogram(stack.url), log_size(stack.api.log_path)
    meter = CpuMeter(roots)
    client = run_client("load", stack.port, raw / f"{name}.csv", raw, timeout_s=args.duration_s + 20 + 30, args=[
        "--kind", "predict", "--path", "/predict", "--n-features", str(n_features), "--connections", str(connections),
        "--duration-s", str(args.duration_s), "--grace-s", "20"])
    cores = meter.cores_used()
    after = batch_histogram(stack.url)
    batches = [int(e["batch_size"]) for e in log_events(stack.api.log_path, "batch_sent", offset) if "batch_size" in e]
    run = Run(f"/predict, batching {mode}, {connections} connections", Responses.read(raw / f"{name}.csv"), client, cores,
              args)
    return BatchRun(mode, connections, run, batches, histogram_delta(before, after) if after else [])


def run_mode(args: argparse.Namespace, raw: Path, mode: str, flag: str) -> tuple[list[BatchRun], dict[str, str]]:
    env = {"ENABLE_MICROBATCH": flag, "QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads),
           "HTTP_PROCESSES": str(args.processes)}
    with Stack(raw / f"logs-{mode}", worker_processes=1, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        warm_up(stack, n_features)
        runs = [measure(args, raw, stack, mode, connections, n_features) for connections in args.levels]
        return runs, dict(stack.env)


# -- report ------------------------------------------------------------------------------------------


def ratios(runs: list[BatchRun], levels: list[int]) -> dict[int, float]:
    by = {(r.mode, r.connections): r.run.goodput for r in runs}
    return {c: by[("on", c)] / by[("off", c)] if by.get(("off", c)) else float("nan") for c in levels}


def plot(out: Path, args: argparse.Namespace, runs: list[BatchRun]) -> None:
    fig, axes = figure(len(runs), f"microbatch: /predict latency percentiles per second ({args.duration_s:g} s runs)",
                       height=2.8)
    for ax, r in zip(axes, runs, strict=True):
        plot_percentiles(ax, r.run.per_second, r.label)
        ax.set_yscale("log")
        ax.set_title(f"{r.label}: {r.run.throughput:.0f}/s, p99 {ms(r.run.stats['p99'])} ms", fontsize=10)
    save(fig, out / "microbatch_latency.png")

    fig, axes = figure(len(args.levels), "microbatch: /predict responses per second, batching on and off")
    for ax, connections in zip(axes, args.levels, strict=True):
        for r in (r for r in runs if r.connections == connections):
            ax.plot([row["second"] for row in r.run.per_second], [row["responses"] for row in r.run.per_second],
                    marker="o", markersize=3, label=f"batching {r.mode}: {r.run.throughput:.0f}/s over the window")
        ax.axvline(args.warmup_s, color="grey", linewidth=0.8, linestyle=":", label="end of warm-up")
        ax.set_title(f"{connections} connections", fontsize=10)
        ax.set_xlabel("second of the run")
        ax.set_ylabel("responses / s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    save(fig, out / "microbatch_throughput.png")

    fig, axes = figure(len(runs), "microbatch: responses per second by status code", height=2.6)
    for ax, r in zip(axes, runs, strict=True):
        plot_statuses(ax, r.run.per_second, r.label)
    save(fig, out / "microbatch_status.png")

    on = [r for r in runs if r.mode == "on"]
    fig, axes = figure(len(on), "microbatch: batch sizes sent by the API with batching on (batch_sent events)")
    for ax, r in zip(axes, on, strict=True):
        counts = Counter(r.batches)
        sizes = sorted(counts)
        ax.bar(sizes, [counts[s] for s in sizes], width=0.8, color="tab:blue", label="batches")
        ax2 = ax.twinx()
        ax2.plot(sizes, [counts[s] * s for s in sizes], "o-", color="tab:orange", markersize=3,
                 label="requests in batches of this size")
        ax2.set_ylabel("requests", color="tab:orange")
        stats = r.batch_stats()
        ax.set_title(f"{r.connections} connections: {stats['batches']} batches, mean size "
                     f"{stats.get('mean', 0):.1f}", fontsize=10)
        ax.set_xlabel("batch size (requests per model call)")
        ax.set_ylabel("batches")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left")
        ax2.legend(fontsize=8, loc="upper right")
    save(fig, out / "microbatch_batch_sizes.png")


def write_tables(out: Path, runs: list[BatchRun], args: argparse.Namespace) -> None:
    write_csv(out / "microbatch_summary.csv",
              ["batching", "connections", "window_s", "throughput_per_s", *(f"p{p}_ms" for p in PERCENTILES), "max_ms",
               "non_200", "invalid", "batches", "mean_batch_size", "api_cores", "worker_cores", "client_cores"],
              [[r.mode, r.connections, args.duration_s - args.warmup_s, round(r.run.throughput, 1),
                *(round(r.run.stats[f"p{p}"], 3) for p in PERCENTILES), round(r.run.stats["max"], 3),
                int((r.run.responses.status != 200).sum()), sum(r.run.responses.invalid().values()),
                r.batch_stats()["batches"], round(r.batch_stats().get("mean", 0), 2), r.run.cores.get("api"),
                sum(v for k, v in r.run.cores.items() if k.startswith("worker")), r.run.cores["client"]] for r in runs])
    write_csv(out / "microbatch_per_second.csv",
              ["batching", "connections", "second", "responses", "p50_ms", "p95_ms", "p99_ms", "non_200"],
              [[r.mode, r.connections, row["second"], row["responses"], row["p50_ms"], row["p95_ms"], row["p99_ms"],
                sum(n for code, n in row["statuses"].items() if code != 200)] for r in runs for row in r.run.per_second])
    rows = []
    for r in runs:
        if r.mode != "on":
            continue
        counts = Counter(r.batches)
        rows += [[r.connections, size, counts[size]] for size in sorted(counts)]
    write_csv(out / "microbatch_batch_sizes.csv", ["connections", "batch_size", "batches"], rows)


def concurrency_note(runs: list[BatchRun], levels: list[int]) -> str:
    """What raising the connections changed, as measured (lowest to highest concurrency)."""
    if len(levels) < 2:
        return ""
    low, high = min(levels), max(levels)
    parts = []
    for mode in ("on", "off"):
        a = next(r.run for r in runs if r.mode == mode and r.connections == low)
        b = next(r.run for r in runs if r.mode == mode and r.connections == high)
        parts.append(f"batching {mode}: {low} -> {high} connections changed throughput {a.throughput:.0f} -> "
                     f"{b.throughput:.0f}/s and p99 {ms(a.stats['p99'])} -> {ms(b.stats['p99'])} ms")
    return "Measured: " + "; ".join(parts) + "."


def summary(info: dict[str, Any], args: argparse.Namespace, env: dict[str, str], runs: list[BatchRun]) -> str:
    ratio = ratios(runs, args.levels)
    results = markdown_table(
        ["run", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses (whole run)", "invalid", "cores used"],
        [[r.label, *r.run.row()[1:]] for r in runs])

    def answered(mode: str, connections: int) -> str:
        run = next(r.run for r in runs if r.mode == mode and r.connections == connections)
        return f"{run.goodput:.0f} (p99 {ms(run.answered_stats['p99'])} ms)"

    ratio_rows = [[c, answered("on", c), answered("off", c), f"**{ratio[c]:.2f}x**",
                   "met" if ratio[c] >= GOAL_RATIO else "**missed**"] for c in args.levels]
    batch_rows = []
    for r in (r for r in runs if r.mode == "on"):
        s = r.batch_stats()
        hist = ", ".join(f"<={le}: {n}" for le, n in r.histogram if n) or "n/a"
        batch_rows.append([r.connections, s["batches"], s.get("requests", 0), f"{s.get('mean', 0):.1f}",
                           f"{s.get('p50', 0):g}", f"{s.get('p90', 0):g}", s.get("max", 0), hist])
    off_batches = sum(len(r.batches) for r in runs if r.mode == "off")
    sizes = {r.connections: ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r.batches).items())) for r in runs
             if r.mode == "on"}
    api_ms = {r.label: r.run.cores.get("api", 0) * 1000 / max(r.run.throughput, 1e-9) for r in runs}
    worker_ms = {r.label: sum(v for k, v in r.run.cores.items() if k.startswith("worker")) * 1000
                 / max(r.run.throughput, 1e-9) for r in runs}
    return "\n\n".join([
        f"# microbatch: /predict with micro-batching on and off ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["runs", "batching on (stack 1), then off (stack 2); each at " + ", ".join(map(str, args.levels))
             + " keep-alive connections, closed loop"],
            ["duration", f"{args.duration_s:g} s per run, figures over {args.duration_s - args.warmup_s:g} s "
                         f"(first {args.warmup_s:g} s left out)"],
            ["HTTP_PROCESSES x HTTP_THREADS", f"{args.processes} x {args.threads} (defaults 1 x 64): API processes "
                                              "on the port, request threads in each"],
            ["worker", f"1 Celery worker process, QUEUE_WORKERS={args.workers}"],
            ["BATCH_SIZE / BATCH_TIMEOUT_MS", f"{env.get('BATCH_SIZE', '32')} / {env.get('BATCH_TIMEOUT_MS', '25')} "
                                              "(defaults)"],
            ["QUEUE_MAXSIZE / CACHE_MODE", f"{env.get('QUEUE_MAXSIZE', '512')} / {env.get('CACHE_MODE', 'busy')} (defaults)"],
            ["body", "`{\"features\": [9 numbers]}`, 1,024 distinct rows in turn"]]),
        "## Results\n\n" + results,
        "### Throughput ratio, batching on / off (goal >= 3x)\n\n" + markdown_table(
            ["connections", "on: 200s/s (their p99)", "off: 200s/s (their p99)", "ratio of 200s/s", "goal"], ratio_rows)
        + "\n\nThe ratio counts valid 200s only: a request refused 429 (the server's backlog bound) is a response "
        "but not an answer.",
        "### Batch sizes with batching on\n\n" + markdown_table(
            ["connections", "batches", "requests in them", "mean size", "p50", "p90", "max",
             "/metrics histogram delta (batches per bucket)"], batch_rows)
        + "\n\nExact distribution (size: batches): " + "; ".join(f"{c} connections: {v}" for c, v in sizes.items())
        + f"\n\nWith batching off the API sent {off_batches} batch messages (expected 0: one task per request).",
        "- API CPU per answer: " + ", ".join(f"{k} {v:.2f} ms" for k, v in api_ms.items()) + ".\n"
        "- Worker CPU per answer: " + ", ".join(f"{k} {v:.2f} ms" for k, v in worker_ms.items()) + ".\n"
        f"- With {args.processes} x {args.threads} request threads, at most {args.processes * args.threads} requests are "
        "inside the API at once whatever the "
        "number of connections: the others wait, read but not dispatched, in waitress's task queue, and that wait is "
        "part of their latency. So the largest batch the API can gather is bounded by the threads, not by the "
        "connections. " + concurrency_note(runs, args.levels),
        "`cores used` is CPU time over wall time during the run (1.0 = one core busy); on a 2-core machine shared "
        "with other work it shows where the time went. Latency is measured by the client from sending the request "
        "to the last byte of the answer.",
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `microbatch_latency.png`: p50/p95/p99 per second, each run\n"
        "- `microbatch_throughput.png`: responses per second, on and off, at each concurrency\n"
        "- `microbatch_status.png`: responses per second by status code, each run\n"
        "- `microbatch_batch_sizes.png`: batch-size distribution with batching on\n"
        "- `microbatch_summary.csv`, `microbatch_per_second.csv`, `microbatch_batch_sizes.csv`: the figures\n"
        "- `raw/`: every response (`predict-<on|off>-<connections>.csv`), client stats, process logs",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    info = machine_info()
    out = results_dir(f"microbatch-{args.label}" if args.label else "microbatch")
    raw = out / "raw"
    print(f"microbatch: results in {out}", flush=True)
    runs: list[BatchRun] = []
    env: dict[str, str] = {}
    for mode, flag in MODES:
        mode_runs, mode_env = run_mode(args, raw, mode, flag)
        runs += mode_runs
        env = env or mode_env
    write_tables(out, runs, args)
    plot(out, args, runs)
    (out / "summary.md").write_text(summary(info, args, env, runs))
    for r in runs:
        s = r.run.stats
        print(f"microbatch [{r.label}]: {r.run.throughput:.0f}/s, p50 {ms(s['p50'])} p95 {ms(s['p95'])} p99 "
              f"{ms(s['p99'])} ms; statuses {dict(r.run.responses.statuses())}; batches {r.batch_stats()}", flush=True)
    for connections, ratio in ratios(runs, args.levels).items():
        print(f"microbatch: {connections} connections: on/off {ratio:.2f}x (goal >= {GOAL_RATIO:g}x: "
              f"{'met' if ratio >= GOAL_RATIO else 'missed'})", flush=True)
    print(f"microbatch: summary in {out / 'summary.md'}", flush=True)
    broken = sum(r.run.responses.invalid().total() for r in runs)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
