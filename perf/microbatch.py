"""Scenario `microbatch`: /predict at saturation with micro-batching on and off (a stack each), at 64 and 256
connections (issue 4, item 1: valid 200s per second on / off >= 3x), with the batch sizes the API sent: exact
from its `batch_sent` log events, cross-checked with the `inference_batch_size` histogram of /metrics.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf import results
from perf.measure import log_events, log_size, percentile, scrape_metrics
from perf.runs import Run, drive, parse, scenario_parser, server_env, warm_up
from perf.stack import Stack

GOAL_RATIO = 3.0
BUCKET = 'inference_batch_size_bucket{le="'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = scenario_parser("microbatch", __doc__, "8 s runs instead of 20 s", threads=32, processes=2, runs=True)
    parser.add_argument("--concurrency", default="64,256", help="comma-separated connection counts")
    parser.add_argument("--label", default="", help="results in ...-microbatch-<label>/ (a variant next to the default run)")
    args = parse(parser, argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.label and not args.label.replace("-", "").isalnum():
        parser.error("--label takes letters, digits and dashes")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency needs positive connection counts")
    return args


def histogram(url: str) -> dict[float, float]:
    """Cumulative counts per bucket bound of the API's batch-size histogram."""
    return {float(key[len(BUCKET):].split('"')[0]): value for key, value in scrape_metrics(f"{url}/metrics", 5).items()
            if key.startswith(BUCKET) and 'stage="api"' in key}


class BatchRun:
    """One client run against one stack, with the batches the API sent meanwhile."""

    def __init__(self, mode: str, connections: int, run: Run, batches: list[int], hist: list[tuple[str, int]]) -> None:
        self.mode, self.connections, self.run, self.batches, self.hist = mode, connections, run, batches, hist
        self.label = f"batching {mode}, {connections} conn"
        sizes = np.asarray(batches)
        self.batch = {"batches": int(sizes.size), "requests": int(sizes.sum()), "mean": float(sizes.mean()) if batches else 0,
                      "p50": percentile(sizes, 50), "p90": percentile(sizes, 90), "max": int(sizes.max()) if batches else 0}


def measure(args: argparse.Namespace, raw: Path, stack: Stack, mode: str, connections: int) -> BatchRun:
    print(f"microbatch: batching {mode}, {connections} connections for {args.duration_s:g} s", flush=True)
    before, offset = histogram(stack.url), log_size(stack.api.log_path)
    run = drive(raw, f"predict-{mode}-{connections}", stack.port, stack.roots(), seconds=args.duration_s,
                warmup_s=args.warmup_s, args=["--connections", str(connections)],
                label=f"/predict, batching {mode}, {connections} connections")
    after = histogram(stack.url)
    batches = [int(e["batch_size"]) for e in log_events(stack.api.log_path, "batch_sent", offset) if "batch_size" in e]
    cumulative = [(le, after[le] - before.get(le, 0.0)) for le in sorted(after)]
    hist = [("+Inf" if le == float("inf") else f"{le:g}", int(round(n - (cumulative[i - 1][1] if i else 0.0))))
            for i, (le, n) in enumerate(cumulative)]
    return BatchRun(mode, connections, run, batches, hist)


def plot(out: Path, args: argparse.Namespace, runs: list[BatchRun]) -> None:
    fig, axes = results.figure(len(runs), f"microbatch: /predict latency percentiles per second ({args.duration_s:g} s runs)", 2.8)
    for ax, r in zip(axes, runs, strict=True):
        results.plot_percentiles(ax, r.run.per_second, r.label,
                                 title=f"{r.label}: {r.run.throughput:.0f}/s, p99 {results.ms(r.run.stats['p99'])} ms")
    results.save(fig, out / "microbatch_latency.png")
    fig, axes = results.figure(len(args.levels), "microbatch: /predict responses per second, batching on and off")
    for ax, connections in zip(axes, args.levels, strict=True):
        results.plot_throughput(ax, {f"batching {r.mode}": r.run for r in runs if r.connections == connections}, args.warmup_s,
                                f"{connections} connections", "best")
    results.save(fig, out / "microbatch_throughput.png")
    fig, axes = results.figure(len(runs), "microbatch: responses per second by status code", height=2.6)
    for ax, r in zip(axes, runs, strict=True):
        results.plot_statuses(ax, r.run.responses, f"{r.label}: responses per second by status code", len(r.run.per_second))
    results.save(fig, out / "microbatch_status.png")
    on = [r for r in runs if r.mode == "on"]
    fig, axes = results.figure(len(on), "microbatch: batch sizes sent by the API with batching on (batch_sent events)")
    for ax, r in zip(axes, on, strict=True):
        sizes = Counter(r.batches)
        xs = sorted(sizes)
        ax.bar(xs, [sizes[s] for s in xs], width=0.8, color="tab:blue", label="batches")
        twin = ax.twinx()
        twin.plot(xs, [sizes[s] * s for s in xs], "o-", color="tab:orange", markersize=3, label="requests in batches of this size")
        twin.set_ylabel("requests", color="tab:orange")
        twin.legend(fontsize=8, loc="upper right")
        results.style(ax, f"{r.connections} connections: {r.batch['batches']} batches, mean size {r.batch['mean']:.1f}",
                      "batch size (requests per model call)", "batches", legend="upper left")
    results.save(fig, out / "microbatch_batch_sizes.png")


def write_tables(out: Path, runs: list[BatchRun], args: argparse.Namespace) -> None:
    results.write_csv(out / "microbatch_summary.csv",
                      ["batching", "connections", "window_s", *Run.CSV_COLUMNS, "batches", "mean_batch_size", "api_cores",
                       "worker_cores", "client_cores"],
                      [[r.mode, r.connections, args.duration_s - args.warmup_s, *r.run.csv_cells(), r.batch["batches"],
                        round(r.batch["mean"], 2), r.run.cores.get("api"), worker_cores(r.run), r.run.cores["client"]] for r in runs])
    results.per_second_csv(out / "microbatch_per_second.csv", {r.label: r.run.per_second for r in runs})
    results.write_csv(out / "microbatch_batch_sizes.csv", ["connections", "batch_size", "batches"],
                      [[r.connections, size, n] for r in runs if r.mode == "on" for size, n in sorted(Counter(r.batches).items())])


def worker_cores(run: Run) -> float:
    return sum(v for k, v in run.cores.items() if k.startswith("worker"))


def summary(out: Path, info: dict[str, Any], args: argparse.Namespace, settings: dict[str, str], runs: list[BatchRun]) -> None:
    by = {(r.mode, r.connections): r.run for r in runs}
    on = [r for r in runs if r.mode == "on"]
    ratio = {c: by["on", c].goodput / by["off", c].goodput if by["off", c].goodput else float("nan") for c in args.levels}
    low, high = min(args.levels), max(args.levels)
    changes = "; ".join(f"batching {m}: {low} -> {high} connections changed throughput {by[m, low].throughput:.0f} -> "
                        f"{by[m, high].throughput:.0f}/s and p99 {results.ms(by[m, low].stats['p99'])} -> "
                        f"{results.ms(by[m, high].stats['p99'])} ms" for m in ("on", "off"))
    per_answer = [f"{r.label}: API {r.run.cores.get('api', 0) * 1000 / max(r.run.throughput, 1e-9):.2f} ms, worker "
                  f"{worker_cores(r.run) * 1000 / max(r.run.throughput, 1e-9):.2f} ms" for r in runs]
    results.write_summary(out, "microbatch: /predict with micro-batching on and off", info, __doc__, [
        results.setup(args, settings),
        results.goals("microbatch", ["goal: valid 200s per second, on / off >= 3x", "on (p99 of the 200s)", "off", "ratio", "verdict"], [
            [f"{c} connections", *(f"{by[m, c].goodput:.0f} (p99 {results.ms(by[m, c].answered_stats['p99'])} ms)" for m in ("on", "off")),
             f"**{ratio[c]:.2f}x**", "met" if ratio[c] >= GOAL_RATIO else "**missed**"] for c in args.levels]),
        "## Results\n\n" + results.markdown_table(Run.HEADERS, [[r.label, *r.run.row()[1:]] for r in runs]),
        "### Batch sizes with batching on\n\n" + results.markdown_table(
            ["connections", "batches", "requests in them", "mean size", "p50", "p90", "max",
             "/metrics histogram delta (batches per bucket)"],
            [[r.connections, *(r.batch[k] for k in ("batches", "requests")), *(f"{r.batch[k]:.3g}" for k in ("mean", "p50", "p90")),
              r.batch["max"], ", ".join(f"<={le}: {n}" for le, n in r.hist if n) or "n/a"] for r in on])
        + "\n\nExact distribution (size: batches): " + "; ".join(
            f"{r.connections} connections: " + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r.batches).items())) for r in on)
        + f"\n\nWith batching off the API sent {sum(len(r.batches) for r in runs if r.mode == 'off')} batch messages "
          "(expected 0: one task per request).",
        "- CPU per answer: " + "; ".join(per_answer) + f".\n- Measured: {changes}."],
        {"microbatch_latency.png": "p50/p95/p99 per second, each run",
         "microbatch_throughput.png": "responses per second, on and off, at each concurrency",
         "microbatch_status.png": "responses per second by status code, each run",
         "microbatch_batch_sizes.png": "batch-size distribution with batching on",
         "microbatch_summary.csv, microbatch_per_second.csv, microbatch_batch_sizes.csv": "the figures"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = results.begin(f"microbatch-{args.label}" if args.label else "microbatch")
    runs: list[BatchRun] = []
    for mode, flag in (("on", "true"), ("off", "false")):
        with Stack(raw / f"logs-{mode}", env=server_env(args, ENABLE_MICROBATCH=flag)) as stack:
            warm_up(stack.url)
            runs += [measure(args, raw, stack, mode, connections) for connections in args.levels]
    write_tables(out, runs, args)
    plot(out, args, runs)
    summary(out, info, args, server_env(args, ENABLE_MICROBATCH="true, then false"), runs)
    return 1 if sum(r.run.responses.invalid().total() for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
