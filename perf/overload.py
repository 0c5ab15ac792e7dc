"""Scenario `overload`: /predict offered at 3x its capacity, measured in the same run, every request with
a deadline.

1. Capacity, on this scenario's stack just before: by default a closed-loop saturation run
   (`perf.loadgen load`, 64 keep-alive connections, no deadline header, `--capacity-s` long, the first
   quarter (at most 2 s) left out): the valid 200s per second the API and its worker deliver when never
   idle. `--capacity-from search` uses perf/capacity.py's search at its `--quick` setting instead (the
   highest open-loop rate with p99 <= 100 ms and only valid 200s): a latency-bounded figure, lower and
   far noisier on a shared machine (141 and 305 req/s on the same day), and 3x of it need not be
   overload at all. `--capacity R` measures nothing.
2. Overload: `--factor` x that capacity for `--run-time-s`, every request carrying
   `X-Request-Timeout-Ms: --timeout-ms`. Client `loadgen` (the default): `perf.loadgen paced`, an open
   loop (request i due at i / rate, whatever the server does, timed from that due time, over a pool of
   at most `--pool` keep-alive connections). Client `locust`: Locust's `OverloadUser`, users of
   `--user-rate` requests a second each (constant-throughput pacing), as many as the rate needs.

Why the open loop by default: Locust's users are closed loops, so once answers take longer than a
user's interval the offered rate falls with them, and on 2 cores Locust's CPU per request (several
times perf.loadgen's) is taken from the API it measures. `--client locust` runs the same check with
Locust; its summary states the rate it really offered.

Goals: goodput (valid 200s answered within their deadline, per second) >= 90 % of the capacity; 429s
answered with p99 <= 20 ms; no 200 after its deadline; no 5xx; no transport error. The stack: one
Celery worker process with QUEUE_WORKERS=2 and the API as 2 processes of 32 threads (HTTP_PROCESSES,
HTTP_THREADS; otherwise its defaults: micro-batching on, QUEUE_MAXSIZE 512).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf import capacity
from perf.common import (
    CpuMeter,
    Responses,
    Stack,
    StackError,
    begin,
    figure,
    latency_stats,
    machine_markdown,
    markdown_table,
    ms,
    run_client,
    save,
    verdict,
    write_csv,
)
from perf.http_bench import Run, client_timeout, load_args, warm_up
from perf.locust_runs import (
    REDIS_DEPTH,
    LoadRun,
    QueueWatch,
    clip_outlier,
    cores_text,
    counts,
    exited,
    files_section,
    plot_run,
    run_locust,
    run_section,
    stack_roots,
    write_run_csvs,
)

GOODPUT_GOAL = 0.9
SHED_P99_GOAL_MS = 20.0
GRACE_S = 20.0
SATURATION_CONNECTIONS = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario overload", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20 s overload run")
    parser.add_argument("--client", choices=("loadgen", "locust"), default="loadgen")
    parser.add_argument("--factor", type=float, default=3.0, help="offered rate / capacity")
    parser.add_argument("--capacity", type=float, default=0.0, help="req/s: measure no capacity, use this")
    parser.add_argument("--capacity-from", choices=("saturation", "search"), default="saturation")
    parser.add_argument("--capacity-s", type=float, default=None, help="saturation run length (default 12, --quick 8)")
    parser.add_argument("--run-time-s", type=float, default=None, help="length of the overload run (default 60, --quick 20)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="X-Request-Timeout-Ms of every request")
    parser.add_argument("--pool", type=int, default=900, help="loadgen: most connections (the API accepts 1,000)")
    parser.add_argument("--preopen", type=int, default=64, help="loadgen: connections opened before the clock starts")
    parser.add_argument("--user-rate", type=float, default=1.0, help="locust: requests per second per user")
    parser.add_argument("--workers", type=int, default=2, help="QUEUE_WORKERS (pool processes of the worker)")
    parser.add_argument("--threads", type=int, default=32, help="HTTP_THREADS of each API process")
    parser.add_argument("--processes", type=int, default=2, help="HTTP_PROCESSES: API processes on the port")
    args = parser.parse_args(argv)
    args.run_time_s = args.run_time_s or (20.0 if args.quick else 60.0)
    args.capacity_s = args.capacity_s or (8.0 if args.quick else 12.0)
    if args.factor <= 0 or args.timeout_ms <= 0 or args.user_rate <= 0:
        parser.error("--factor, --timeout-ms and --user-rate must be positive")
    return args


def measure_capacity(args: argparse.Namespace, raw: Path, stack: Stack,
                     n_features: int) -> tuple[float, list[capacity.Step], Run | None]:
    """Valid 200s per second at saturation (or the search's capacity), the search's steps, the saturation run."""
    if args.capacity:
        return args.capacity, [], None
    if args.capacity_from == "search":
        steps = capacity.search(capacity.parse_args(["--quick"]), raw, stack, n_features)
        if not capacity.capacity_of(steps):
            raise StackError("capacity: no step held (p99 <= 100 ms, all valid 200s); see the steps above")
        return capacity.capacity_of(steps), steps, None
    load = argparse.Namespace(connections=SATURATION_CONNECTIONS, duration_s=args.capacity_s,
                              warmup_s=min(2.0, args.capacity_s / 4))
    print(f"overload: capacity: /predict at saturation, {load.connections} connections for {load.duration_s:g} s",
          flush=True)
    meter = CpuMeter(stack_roots(stack))
    client = run_client("load", stack.port, raw / "saturation.csv", raw, timeout_s=client_timeout(load),
                        args=load_args(load, "predict", "/predict", n_features))
    run = Run("/predict at saturation (closed loop)", Responses.read(raw / "saturation.csv"), client,
              meter.cores_used(), load)
    ok = run.window.valid & (run.window.status == 200)
    found = float(ok.sum()) / (load.duration_s - load.warmup_s)
    if not found:
        raise StackError(f"capacity: no valid 200 at saturation: {dict(run.responses.statuses())}")
    return found, [], run


def run_loadgen(args: argparse.Namespace, out: Path, stack: Stack, rate: float, n_features: int,
                title: str) -> tuple[LoadRun, dict[str, Any]]:
    raw = out / "raw"
    print(f"overload: perf.loadgen paced at {rate:.0f} req/s for {args.run_time_s:g} s, deadline {args.timeout_ms} ms",
          flush=True)
    with QueueWatch(stack) as watch:
        meter = CpuMeter(stack_roots(stack))
        client = run_client("paced", stack.port, raw / "overload.csv", raw, timeout_s=args.run_time_s + GRACE_S + 60,
                            status=watch.status, args=[
                                "--kind", "predict", "--path", "/predict", "--n-features", str(n_features),
                                "--rate", f"{rate:.3f}", "--connections", str(args.pool), "--preopen", str(args.preopen),
                                "--duration-s", str(args.run_time_s), "--grace-s", str(GRACE_S),
                                "--header", f"X-Request-Timeout-Ms:{args.timeout_ms}"])
        cores = meter.cores_used()
    cores["client (perf.loadgen)"] = round(client.get("cpu_s", 0) / max(client.get("wall_s", 1), 1e-9), 2)
    responses = Responses.read(raw / "overload.csv")
    run = LoadRun("overload", title, "perf.loadgen paced (open loop)", args.run_time_s, {"/predict": responses}, cores,
                  watch.on_clock(float(client.get("t0_epoch", 0))), offered_per_s=rate, exited=exited(stack))
    return run, client


def run_with_locust(args: argparse.Namespace, out: Path, stack: Stack, rate: float, title: str) -> LoadRun:
    users = math.ceil(rate / args.user_rate)
    run = run_locust(stack, out, "overload", title, "OverloadUser", users=users, spawn_rate=max(users / 5, 1),
                     run_time_s=args.run_time_s, extra=["--perf-user-rate", f"{args.user_rate:g}",
                                                        "--perf-timeout-ms", str(args.timeout_ms)])
    run.offered_per_s = rate
    return run


class Verdicts:
    """The overload goals, from every /predict response of the run."""

    def __init__(self, run: LoadRun, timeout_ms: int, capacity_per_s: float) -> None:
        r = self.responses = run.endpoints["/predict"]
        self.timeout_ms, self.capacity = timeout_ms, capacity_per_s
        self.span_s = max(run.duration_s, float(r.end_s.max()) if len(r) else 0.0)
        ok = (r.status == 200) & r.valid
        self.in_time = ok & (r.latency_ms <= timeout_ms)
        self.goodput = float(self.in_time.sum()) / self.span_s
        self.late = int((ok & (r.latency_ms > timeout_ms)).sum())
        self.shed = latency_stats(r.latency_ms[r.status == 429])
        self.server_errors = Counter(str(s) for s in r.status[r.status >= 500].tolist())
        self.transport = Counter(d for d, s in zip(r.detail, r.status, strict=True) if s == 0)
        expired = r.latency_ms[r.status == 504] - timeout_ms
        self.expired_after = latency_stats(expired)
        self.offered = len(r) / run.duration_s
        self.exited = run.exited

    def rows(self) -> list[list[Any]]:
        shed = ("no request was shed with 429" if not self.shed["count"]
                else f"p99 {ms(self.shed['p99'])} ms over {self.shed['count']} answers")
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


def plot_deadlines(out: Path, run: LoadRun, v: Verdicts) -> Path:
    """Per second: 200s in time, 200s late, everything else, against capacity and the goodput goal; and the
    latency of each status class."""
    r, seconds = v.responses, run.seconds
    fig, (g_ax, l_ax) = figure(2, f"{run.title}: goodput and deadlines")
    end = r.end_s
    xs = np.arange(seconds)
    in_time = np.histogram(end[v.in_time], bins=seconds, range=(0, seconds))[0]
    late = np.histogram(end[(r.status == 200) & ~v.in_time], bins=seconds, range=(0, seconds))[0]
    other = np.histogram(end[r.status != 200], bins=seconds, range=(0, seconds))[0]
    g_ax.bar(xs, in_time, width=0.9, color="tab:green", label="200 within its deadline (goodput)")
    g_ax.bar(xs, late, width=0.9, bottom=in_time, color="tab:red", label="200 after its deadline")
    g_ax.bar(xs, other, width=0.9, bottom=in_time + late, color="lightgrey", label="any other answer")
    g_ax.axhline(v.capacity, color="tab:blue", linestyle="--", linewidth=1, label=f"capacity {v.capacity:.0f}/s")
    g_ax.axhline(GOODPUT_GOAL * v.capacity, color="red", linewidth=0.8, label=f"goal: goodput >= {GOODPUT_GOAL:.0%}")
    if run.offered_per_s:
        g_ax.axhline(run.offered_per_s, color="grey", linestyle=":", label=f"offered {run.offered_per_s:.0f}/s")
    clip_outlier(g_ax, (in_time + late + other).tolist())
    g_ax.set_title("answers per second (by completion time; transport errors are \"any other answer\")", fontsize=10)
    g_ax.set_xlabel("second of the run")
    g_ax.set_ylabel("answers / s")
    g_ax.grid(alpha=0.3, axis="y")
    g_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    for status, colour in ((200, "tab:green"), (429, "tab:orange"), (504, "tab:red")):
        part = r.where(r.status == status)
        if len(part):
            per = part.per_second(seconds)
            l_ax.plot([row["second"] for row in per], [row["p99_ms"] for row in per], color=colour,
                      label=f"{status}: p99 per second")
    l_ax.axhline(v.timeout_ms, color="tab:red", linestyle="--", linewidth=0.8, label=f"deadline {v.timeout_ms} ms")
    l_ax.axhline(SHED_P99_GOAL_MS, color="tab:orange", linestyle="--", linewidth=0.8,
                 label=f"goal: 429 p99 <= {SHED_P99_GOAL_MS:g} ms")
    l_ax.set_yscale("log")
    l_ax.set_title("p99 latency per second by status", fontsize=10)
    l_ax.set_xlabel("second of the run")
    l_ax.set_ylabel("latency (ms)")
    l_ax.grid(alpha=0.3, which="both")
    l_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return save(fig, out / "overload_deadlines.png")


def where_the_backlog_was(run: LoadRun, v: Verdicts, threads: int, connections: int) -> str:
    """When the client waited for far more requests than Redis ever held, say where the rest were. `connections`:
    the most requests the client can have sent at once (its pool, or Locust's users)."""
    waiting = max((n for _, n in run.outstanding()), default=0.0)
    in_redis = run.queue_max().get(REDIS_DEPTH, 0.0)
    if waiting <= 4 * max(in_redis, threads):
        return ""
    sent = min(waiting, connections)
    unsent = (f"; at most {sent:.0f} of them had been sent (the client's {connections} connections), the rest were due "
              "and waiting for a connection, on the clock" if waiting > connections else "")
    return (f"\n\nThe client waited for up to {waiting:.0f} answers at once{unsent}. The Redis queue never held more "
            f"than {in_redis:.0f}: the requests sent were mostly inside the API, waiting for one of its {threads} request "
            "threads (each admitted /predict holds one until its answer). That backlog is bounded: a request that "
            "finds QUEUE_MAXSIZE others waiting, or would wait longer than half its deadline, is answered 429 by "
            "the server's I/O thread" + (", yet nothing was shed." if not v.shed["count"] else "."))


def capacity_section(steps: list[capacity.Step], saturated: Run | None) -> str:
    if saturated is not None:
        return ("### Capacity: /predict at saturation (same stack, just before)\n\n"
                + markdown_table(["run", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses",
                                  "invalid bodies", "cores used"], [saturated.row()]))
    if not steps:
        return "### Capacity\n\nGiven with `--capacity` (not measured in this run)."
    return "### Capacity: perf/capacity.py's search (same stack, just before)\n\n" + markdown_table(
        ["step", "offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "verdict"],
        [[s.index, f"{s.rate:.0f}", f"{s.achieved:.0f}", ms(s.stats["p50"]), ms(s.stats["p99"]), s.errors,
          "held" if s.held else "missed"] for s in steps])


def summary(info: dict[str, Any], args: argparse.Namespace, run: LoadRun, v: Verdicts, steps: list[capacity.Step],
            saturated: Run | None, client: dict[str, Any], paths: list[Path]) -> str:
    client_line = (f"offered {v.offered:.0f} req/s (target {run.offered_per_s:.0f}); send delay p99 "
                   f"{client.get('send_delay_p99_ms')} ms, max {client.get('send_delay_max_ms')} ms; largest backlog "
                   f"{client.get('max_backlog')} requests; {client.get('connects')} connections opened"
                   if client else
                   f"offered {v.offered:.0f} req/s (target {run.offered_per_s:.0f}) from {math.ceil((run.offered_per_s or 0) / args.user_rate)} "
                   f"users at {args.user_rate:g} req/s each")
    return "\n\n".join([
        f"# overload: /predict at {args.factor:g}x its capacity ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["capacity", f"{v.capacity:.0f} req/s: " + ("valid 200s per second at saturation" if saturated
                                                          else "perf/capacity.py's search" if steps else "given")],
            ["offered", f"{args.factor:g} x capacity = {run.offered_per_s:.0f} req/s for {args.run_time_s:g} s"],
            ["client", f"{run.client}: {client_line}"],
            ["deadline", f"X-Request-Timeout-Ms: {args.timeout_ms} on every request"],
            ["worker / API", f"1 Celery worker process, QUEUE_WORKERS={args.workers}; HTTP_PROCESSES={args.processes}, "
                             f"HTTP_THREADS={args.threads}; "
                             "other settings at their defaults"]]),
        "## Goals\n\n" + markdown_table(["goal", "this run", "verdict"], v.rows())
        + f"\n\n504s came {ms(v.expired_after['p50'])} ms (p50) / {ms(v.expired_after['p99'])} ms (p99) after the deadline "
          f"as the client measures it ({v.expired_after['count']} of them)." * bool(v.expired_after["count"]),
        "## Results\n\n" + run_section(run) + where_the_backlog_was(run, v, args.threads * args.processes, args.pool if client else
                                                                    math.ceil((run.offered_per_s or 0) / args.user_rate)),
        "Latency with `perf.loadgen` is from each request's due time (the client's own lateness, shown above, "
        "counts against the API); with Locust from when the request was sent. The API counts a request's "
        "deadline from when it was read in full, so time spent waiting for a thread is in its deadline; the "
        "client's own lateness is not. Goodput is the valid 200s within the deadline over the time from the "
        f"first request to the last answer ({v.span_s:.1f} s).",
        capacity_section(steps, saturated),
        "## Machine\n\n" + machine_markdown(info),
        files_section(paths, [run]),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("overload")
    env = {"QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads), "HTTP_PROCESSES": str(args.processes)}
    client: dict[str, Any] = {}
    with Stack(raw / "logs", worker_processes=1, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        warm_up(stack, n_features)
        found, steps, saturated = measure_capacity(args, raw, stack, n_features)
        rate = args.factor * found
        print(f"overload: capacity {found:.0f} req/s; offering {rate:.0f} req/s", flush=True)
        capacity.wait_drained(stack)
        title = f"overload: {rate:.0f} req/s offered ({args.factor:g}x capacity {found:.0f}/s), deadline {args.timeout_ms} ms"
        if args.client == "loadgen":
            run, client = run_loadgen(args, out, stack, rate, n_features, title)
        else:
            run = run_with_locust(args, out, stack, rate, title)
    v = Verdicts(run, args.timeout_ms, found)
    write_run_csvs(out, run)
    if steps:
        write_csv(out / "overload_capacity_steps.csv", ["step", "offered_per_s", "achieved_per_s", "p50_ms", "p99_ms",
                                                         "errors", "held"],
                  [[s.index, round(s.rate, 1), round(s.achieved, 1), round(s.stats["p50"], 3), round(s.stats["p99"], 3),
                    s.errors, int(s.held)] for s in steps])
    r = run.endpoints["/predict"]
    groups = {f"/predict {code}": r.where(r.status == code) for code in sorted(set(r.status.tolist()) - {0})}
    paths = [*plot_run(out, run, latency=groups, goals_ms={"/predict 429": SHED_P99_GOAL_MS,
                                                          "/predict 200": float(args.timeout_ms)}),
             plot_deadlines(out, run, v)]
    (out / "summary.md").write_text(summary(info, args, run, v, steps, saturated, client, paths))
    for goal, measured, met in v.rows():
        print(f"overload: {goal}: {measured}: {met.replace('*', '')}", flush=True)
    print(f"overload: offered {v.offered:.0f} req/s by {run.client}; cores {cores_text(run.cores)}; "
          f"summary in {out / 'summary.md'}", flush=True)
    # Functional failure: a broken answer or a dead process (transport errors under overload are a goal missed).
    return 1 if run.broken() - sum(v.transport.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
