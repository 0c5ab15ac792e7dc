"""Scenario `overload`: /predict offered at 3x its capacity (measured on the same stack just before), every request
with a deadline, from the open-loop client (or `--client locust`). Goals: goodput >= 90 % of capacity, 429s with
p99 <= 20 ms, no 200 after its deadline, no 5xx, no transport error.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf import capacity
from perf.locust_runs import REDIS_DEPTH, LoadRun, QueueWatch, clip_outlier, run_locust, run_section, write_run
from perf.measure import CpuMeter, Responses, latency_stats
from perf.results import begin, cores_text, counts, figure, goals, markdown_table, ms, save, setup, style, table, verdict, write_summary
from perf.runs import Run, drive, parse, run_client, scenario_parser, server_env, wait_drained, warm_up
from perf.stack import Stack, StackError

GOODPUT_GOAL = 0.9
SHED_P99_GOAL_MS = 20.0
GRACE_S = 20.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = scenario_parser("overload", __doc__, "a 20 s overload run", threads=32, processes=2, pool=900, preopen=64)
    parser.add_argument("--client", choices=("loadgen", "locust"), default="loadgen")
    parser.add_argument("--factor", type=float, default=3.0, help="offered rate / capacity")
    parser.add_argument("--capacity", type=float, default=0.0, help="req/s: measure no capacity, use this")
    parser.add_argument("--capacity-from", choices=("saturation", "search"), default="saturation")
    parser.add_argument("--capacity-s", type=float, default=None, help="saturation run length (default 12, --quick 8)")
    parser.add_argument("--run-time-s", type=float, default=None, help="length of the overload run (default 60, --quick 20)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="X-Request-Timeout-Ms of every request")
    parser.add_argument("--user-rate", type=float, default=1.0, help="locust: requests per second per user")
    args = parse(parser, argv, run_time_s=(60.0, 20.0), capacity_s=(12.0, 8.0))
    if args.factor <= 0 or args.timeout_ms <= 0 or args.user_rate <= 0:
        parser.error("--factor, --timeout-ms and --user-rate must be positive")
    return args


def measure_capacity(args: argparse.Namespace, raw: Path, stack: Stack) -> tuple[float, list[capacity.Step], Run | None]:
    """Valid 200s per second at saturation (or the search's capacity), the search's steps, the saturation run."""
    if args.capacity:
        return args.capacity, [], None
    if args.capacity_from == "search":
        steps = capacity.search(capacity.parse_args(["--quick"]), raw, capacity.as_target(stack))
        if not capacity.capacity_of(steps):
            raise StackError("capacity: no step held (p99 <= 100 ms, all valid 200s); see the steps above")
        return capacity.capacity_of(steps), steps, None
    print(f"overload: capacity: /predict at saturation, 64 connections for {args.capacity_s:g} s", flush=True)
    run = drive(raw, "saturation", stack.port, stack.roots(), seconds=args.capacity_s, warmup_s=min(2.0, args.capacity_s / 4),
                args=["--connections", "64"], label="/predict at saturation (closed loop)")
    if not run.goodput:
        raise StackError(f"capacity: no valid 200 at saturation: {dict(run.responses.statuses())}")
    return run.goodput, [], run


def run_loadgen(args: argparse.Namespace, out: Path, stack: Stack, rate: float, title: str) -> tuple[LoadRun, dict[str, Any]]:
    print(f"overload: perf.loadgen paced at {rate:.0f} req/s for {args.run_time_s:g} s, deadline {args.timeout_ms} ms",
          flush=True)
    with QueueWatch(stack) as watch:
        meter = CpuMeter(stack.roots())
        client = run_client("paced", stack.port, out / "raw" / "overload.csv", timeout_s=args.run_time_s + GRACE_S + 60,
                            status=watch.status, args=[
                                "--rate", f"{rate:.3f}", "--connections", str(args.pool), "--preopen", str(args.preopen),
                                "--duration-s", str(args.run_time_s), "--grace-s", str(GRACE_S),
                                "--header", f"X-Request-Timeout-Ms:{args.timeout_ms}"])
        cores = {**meter.cores_used(), "client (perf.loadgen)": round(client["cpu_s"] / max(client["wall_s"], 1e-9), 2)}
    return LoadRun("overload", title, "perf.loadgen paced (open loop)", args.run_time_s,
                   {"/predict": Responses.read(out / "raw" / "overload.csv")}, cores,
                   watch.on_clock(float(client["t0_epoch"])), offered_per_s=rate, exited=stack.exited()), client


class Verdicts:
    """The overload goals, from every /predict response of the run."""

    def __init__(self, run: LoadRun, timeout_ms: int, capacity_per_s: float) -> None:
        r = self.responses = run.endpoints["/predict"]
        self.timeout_ms, self.capacity = timeout_ms, capacity_per_s
        self.span_s = max(run.duration_s, float(r.end_s.max()) if len(r) else 0.0)
        self.in_time = r.ok & (r.latency_ms <= timeout_ms)
        self.goodput = float(self.in_time.sum()) / self.span_s
        self.late = int((r.ok & (r.latency_ms > timeout_ms)).sum())
        self.shed = latency_stats(r.latency_ms[r.status == 429])
        self.server_errors = Counter(str(s) for s in r.status[r.status >= 500].tolist())
        self.transport = Counter(d for d, s in zip(r.detail, r.status, strict=True) if s == 0)
        self.expired_after = latency_stats(r.latency_ms[r.status == 504] - timeout_ms)
        self.offered = len(r) / run.duration_s
        self.exited = run.exited

    def rows(self) -> list[list[Any]]:
        shed = (f"p99 {ms(self.shed['p99'])} ms over {self.shed['count']} answers" if self.shed["count"]
                else "no request was shed with 429")
        return [
            [f"goodput >= {GOODPUT_GOAL:.0%} of capacity ({GOODPUT_GOAL * self.capacity:.0f}/s)",
             f"{self.goodput:.0f}/s = {self.goodput / self.capacity:.0%}",
             "met" if self.goodput >= GOODPUT_GOAL * self.capacity else "**missed**"],
            [f"429 answered p99 <= {SHED_P99_GOAL_MS:g} ms", shed,
             verdict(self.shed["p99"], SHED_P99_GOAL_MS) if self.shed["count"] else "**missed** (nothing shed)"],
            [f"no 200 after its deadline ({self.timeout_ms} ms)", f"{self.late} late of {self.late + int(self.in_time.sum())} 200s",
             verdict(self.late, 0)],
            ["no 5xx", counts(self.server_errors), verdict(sum(self.server_errors.values()), 0)],
            ["no transport error", counts(self.transport), verdict(sum(self.transport.values()), 0)],
            ["the API and the worker stay up", "; ".join(self.exited) or "yes", verdict(len(self.exited), 0)],
        ]


def plot_deadlines(out: Path, run: LoadRun, v: Verdicts) -> None:
    """Per second: 200s in time, 200s late, everything else, against capacity and the goodput goal; and the
    p99 of each status class."""
    r, seconds = v.responses, run.seconds
    fig, (g_ax, l_ax) = figure(2, f"{run.title}: goodput and deadlines")
    xs, bottom = np.arange(seconds), np.zeros(seconds)
    for mask, colour, label in ((v.in_time, "tab:green", "200 within its deadline (goodput)"),
                                ((r.status == 200) & ~v.in_time, "tab:red", "200 after its deadline"),
                                (r.status != 200, "lightgrey", "any other answer")):
        per = np.histogram(r.end_s[mask], bins=seconds, range=(0, seconds))[0]
        g_ax.bar(xs, per, width=0.9, bottom=bottom, color=colour, label=label)
        bottom += per
    g_ax.axhline(v.capacity, color="tab:blue", linestyle="--", linewidth=1, label=f"capacity {v.capacity:.0f}/s")
    g_ax.axhline(GOODPUT_GOAL * v.capacity, color="red", linewidth=0.8, label=f"goal: goodput >= {GOODPUT_GOAL:.0%}")
    if run.offered_per_s:
        g_ax.axhline(run.offered_per_s, color="grey", linestyle=":", label=f"offered {run.offered_per_s:.0f}/s")
    clip_outlier(g_ax, bottom.tolist())
    style(g_ax, "answers per second (by completion time; transport errors are \"any other answer\")",
          ylabel="answers / s", below=3)
    for status, colour in ((200, "tab:green"), (429, "tab:orange"), (504, "tab:red")):
        if len(part := r.where(r.status == status)):
            per_second = part.per_second(seconds)
            l_ax.plot([row["second"] for row in per_second], [row["p99_ms"] for row in per_second], color=colour,
                      label=f"{status}: p99 per second")
    l_ax.axhline(v.timeout_ms, color="tab:red", linestyle="--", linewidth=0.8, label=f"deadline {v.timeout_ms} ms")
    l_ax.axhline(SHED_P99_GOAL_MS, color="tab:orange", linestyle="--", linewidth=0.8,
                 label=f"goal: 429 p99 <= {SHED_P99_GOAL_MS:g} ms")
    style(l_ax, "p99 latency per second by status", ylabel="latency (ms)", log="y", below=3)
    save(fig, out / "overload_deadlines.png")


def backlog_note(run: LoadRun, v: Verdicts, threads: int, connections: int) -> str:
    """When the client waited for far more requests than Redis ever held, say where the rest were."""
    waiting = max((n for _, n in run.outstanding()), default=0.0)
    in_redis = run.queue_max().get(REDIS_DEPTH, 0.0)
    if waiting <= 4 * max(in_redis, threads):
        return ""
    unsent = (f"; at most {min(waiting, connections):.0f} of them had been sent (the client's {connections} connections), "
              "the rest were due and waiting for a connection, on the clock" if waiting > connections else "")
    return (f"\n\nThe client waited for up to {waiting:.0f} answers at once{unsent}. The Redis queue never held more "
            f"than {in_redis:.0f}: the requests sent were mostly inside the API, waiting for one of its {threads} request "
            "threads. That backlog is bounded: a request that finds QUEUE_MAXSIZE others waiting, or would wait longer "
            "than half its deadline, is answered 429" + (", yet nothing was shed." if not v.shed["count"] else "."))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("overload")
    client: dict[str, Any] = {}
    with Stack(raw / "logs", env=server_env(args)) as stack:
        warm_up(stack.url)
        found, steps, saturated = measure_capacity(args, raw, stack)
        rate = args.factor * found
        print(f"overload: capacity {found:.0f} req/s; offering {rate:.0f} req/s", flush=True)
        wait_drained(stack.queue_probe().depth)
        users = math.ceil(rate / args.user_rate)
        title = f"overload: {rate:.0f} req/s offered ({args.factor:g}x capacity {found:.0f}/s), deadline {args.timeout_ms} ms"
        if args.client == "loadgen":
            run, client = run_loadgen(args, out, stack, rate, title)
        else:
            run = run_locust(stack, out, "overload", title, "OverloadUser", users=users, spawn_rate=max(users / 5, 1),
                             run_time_s=args.run_time_s,
                             extra=["--perf-user-rate", f"{args.user_rate:g}", "--perf-timeout-ms", str(args.timeout_ms)])
            run.offered_per_s = rate
    v = Verdicts(run, args.timeout_ms, found)
    r = run.endpoints["/predict"]
    files = write_run(out, run, {"/predict 429": SHED_P99_GOAL_MS, "/predict 200": float(args.timeout_ms)},
                      {f"/predict {code}": r.where(r.status == code) for code in sorted(set(r.status.tolist()) - {0})})
    plot_deadlines(out, run, v)
    client_line = (f"offered {v.offered:.0f} req/s (target {rate:.0f}); send delay p99 {client.get('send_delay_p99_ms')} ms, "
                   f"max {client.get('send_delay_max_ms')} ms; largest backlog {client.get('max_backlog')} requests; "
                   f"{client.get('connects')} connections opened" if client else
                   f"offered {v.offered:.0f} req/s (target {rate:.0f}) from {users} users at {args.user_rate:g} req/s each")
    if saturated is not None:
        measured = "### Capacity: /predict at saturation (same stack, just before)\n\n" + markdown_table(Run.HEADERS, [saturated.row()])
    elif steps:
        measured = "### Capacity: perf/capacity.py's search (same stack, just before)\n\n" + table(
            out / "overload_capacity_steps.csv", ["step", "offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "verdict"],
            [[s.index, f"{s.rate:.0f}", f"{s.achieved:.0f}", ms(s.stats["p50"]), ms(s.stats["p99"]), s.errors,
              "held" if s.held else "missed"] for s in steps])
    else:
        measured = "### Capacity\n\nGiven with `--capacity` (not measured in this run)."
    write_summary(out, f"overload: /predict at {args.factor:g}x its capacity", info, __doc__, [
        setup(args, stack.overrides) + f"\n\nCapacity {found:.0f} req/s (" + ("valid 200s per second at saturation" if saturated
            else "perf/capacity.py's search" if steps else "given") + f"); offered {args.factor:g}x = {rate:.0f} req/s by "
        f"{run.client}: {client_line}.",
        goals("overload", ["goal", "this run", "verdict"], v.rows())
        + (f"\n\n504s came {ms(v.expired_after['p50'])} ms (p50) / {ms(v.expired_after['p99'])} ms (p99) after the deadline "
           f"as the client measures it ({v.expired_after['count']} of them)." if v.expired_after["count"] else ""),
        "## Results\n\n" + run_section(run) + backlog_note(run, v, args.threads * args.processes, args.pool if client else users),
        "Latency with `perf.loadgen` is from each request's due time (the client's own lateness counts against the "
        "API); with Locust from when it was sent. Goodput is the valid 200s within the deadline over the time from "
        f"the first request to the last answer ({v.span_s:.1f} s).", measured],
        {**files, "overload_deadlines.png": "goodput per second and p99 by status against the deadline",
         **({"overload_capacity_steps.csv": "the capacity search's steps"} if steps else {})})
    print(f"overload: offered {v.offered:.0f} req/s by {run.client}; cores {cores_text(run.cores)}", flush=True)
    # Functional failure: a broken answer or a dead process (transport errors under overload are a goal missed).
    return 1 if run.broken() - sum(v.transport.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
