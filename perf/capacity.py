"""Scenario `capacity`: the highest /predict rate, micro-batching on, answered with p99 <= 100 ms and no errors.

Issue 4, "what must hold" item 2: that capacity must be at least half the bare waitress echo
throughput measured in the same run on the same machine.

Two measurements, one after the other:

1. echo: `perf.echo` on waitress with the API's HTTP_THREADS, closed loop over 64 keep-alive
   connections (as in the `http` scenario), for `--echo-s`; then the same echo as a one-route Flask
   app (`perf.echo --flask`) on the same server: the most any Flask view answers on this machine, an
   upper bound for /predict before any work of its own (parsing, admission, the queue, the model).
2. /predict, open loop (`perf.loadgen paced`): requests are due at a fixed rate whatever the server
   does, sent over a pool of at most `--pool` keep-alive connections, and timed from when each was
   due, so a server that falls behind shows it in p99 instead of slowing the client down (no
   coordinated omission). The rate starts at `--start-rate` and grows by `--factor` per step of
   `--step-s`, until a step misses (p99 > 100 ms, or any answer other than a valid 200); then
   `--bisect` steps halve the gap between the last rate that held and the first that did not (when
   even the first step missed, they halve the rate instead). At most `--max-steps` steps in all.
   Between steps the queue is left to empty.

Capacity is the highest offered rate that held. A step's achieved rate is its valid 200 answers over
the time from its first due request to its last answer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perf.common import (
    PERCENTILES,
    CpuMeter,
    Responses,
    Stack,
    figure,
    latency_stats,
    log_events,
    machine_info,
    machine_markdown,
    markdown_table,
    ms,
    results_dir,
    run_client,
    save,
    stop_on_sigterm,
    write_csv,
)
from perf.http_bench import Run, echo_baseline, warm_up

GOAL_P99_MS = 100.0
GOAL_RATIO = 0.5
DRAIN_WAIT_S = 15.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s steps, 8 s echo run, one bisection step")
    parser.add_argument("--step-s", type=float, default=None, help="length of each rate step (default 8, --quick 4)")
    parser.add_argument("--echo-s", type=float, default=None, help="length of the echo run (default 20, --quick 8)")
    parser.add_argument("--start-rate", type=float, default=100.0, help="offered rate of the first step (req/s)")
    parser.add_argument("--factor", type=float, default=1.25, help="rate multiplier between steps while they hold")
    parser.add_argument("--bisect", type=int, default=None, help="bisection steps after the first miss (default 3, --quick 1)")
    parser.add_argument("--max-steps", type=int, default=24, help="bound on the number of steps")
    parser.add_argument("--pool", type=int, default=256, help="most connections the paced client opens")
    parser.add_argument("--preopen", type=int, default=32, help="connections opened before each step's clock starts")
    parser.add_argument("--connections", type=int, default=64, help="echo: closed-loop connections")
    parser.add_argument("--threads", type=int, default=32, help="HTTP_THREADS of each API process and of the echo server")
    parser.add_argument("--processes", type=int, default=2, help="HTTP_PROCESSES: API processes on the port")
    parser.add_argument("--workers", type=int, default=2, help="QUEUE_WORKERS (pool processes of the worker)")
    args = parser.parse_args(argv)
    args.step_s = args.step_s or (4.0 if args.quick else 8.0)
    args.echo_s = args.echo_s or (8.0 if args.quick else 20.0)
    args.bisect = args.bisect if args.bisect is not None else (1 if args.quick else 3)
    if args.factor <= 1 or args.start_rate <= 0 or args.max_steps < 1:
        parser.error("--factor must be > 1, --start-rate > 0 and --max-steps >= 1")
    return args


@dataclass
class Step:
    index: int
    rate: float
    responses: Responses
    client: dict[str, Any]
    cores: dict[str, float]
    pipeline: dict[str, float]

    @property
    def stats(self) -> dict[str, float]:
        return latency_stats(self.responses.latency_ms)

    @property
    def errors(self) -> int:
        return int((~self.responses.valid | (self.responses.status != 200)).sum())

    @property
    def achieved(self) -> float:
        ok = self.responses.valid & (self.responses.status == 200)
        span = float(self.responses.end_s.max()) if len(self.responses) else 0.0
        return float(ok.sum()) / span if span > 0 else 0.0

    @property
    def held(self) -> bool:
        return len(self.responses) > 0 and self.errors == 0 and self.stats["p99"] <= GOAL_P99_MS

    def row(self) -> list[Any]:
        s = self.stats
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.responses.statuses().items()))
        return [self.index, f"{self.rate:.0f}", f"{self.achieved:.0f}", ms(s["p50"]), ms(s["p95"]), ms(s["p99"]),
                ms(s["max"]), statuses, self.errors, self.client.get("send_delay_p99_ms", "?"),
                self.client.get("max_backlog", "?"),
                self.client.get("connects", "?"), f"{self.pipeline['batches']:.0f}",
                f"{self.pipeline['mean_batch']:.1f}", ms(self.pipeline["wait_p50"]), ms(self.pipeline["wait_p99"]),
                ms(self.pipeline["model_p50"]), ", ".join(f"{k} {v}" for k, v in self.cores.items()),
                "held" if self.held else "**missed**"]


def pipeline(stack: Stack, since_epoch: float, until_epoch: float) -> dict[str, float]:
    """Where a batch's time went, from the logs: the API's `batch_sent` to the worker's
    `predict_inference_start` (Redis queue, the worker's fetch and its hand-over to a pool process),
    and the model call itself (`predict_inference_end.duration_ms`), for batches sent in the window."""
    sent = {e["task_id"]: e for e in log_events(stack.api.log_path, "batch_sent")
            if since_epoch <= float(e.get("ts", 0)) <= until_epoch}
    starts, durations = {}, []
    for worker in stack.workers:
        starts.update({e["task_id"]: float(e["ts"]) for e in log_events(worker.log_path, "predict_inference_start")
                       if e.get("task_id") in sent})
        durations += [float(e["duration_ms"]) for e in log_events(worker.log_path, "predict_inference_end")
                      if e.get("task_id") in sent and "duration_ms" in e]
    waits = [(starts[t] - float(e["ts"])) * 1000 for t, e in sent.items() if t in starts]
    sizes = [int(e.get("batch_size", 0)) for e in sent.values()]
    nan = float("nan")
    return {"batches": len(sent), "mean_batch": float(np.mean(sizes)) if sizes else nan,
            "wait_p50": float(np.percentile(waits, 50)) if waits else nan,
            "wait_p99": float(np.percentile(waits, 99)) if waits else nan,
            "model_p50": float(np.percentile(durations, 50)) if durations else nan}


@dataclass
class Target:
    """What a search drives: a server on `port`, the process trees whose CPU a step reports, the length of
    its queue (left to empty between steps) and, for this project's stack, the logs `pipeline` reads."""

    port: int
    roots: dict[str, int]
    depth: Callable[[], int] = lambda: 0
    stack: Stack | None = None


def as_target(server: Stack | Target) -> Target:
    if isinstance(server, Target):
        return server
    return Target(server.port, {"api": server.api.pid, **{w.name: w.pid for w in server.workers}},
                  server.queue_probe().depth, server)


def no_pipeline() -> dict[str, float]:
    nan = float("nan")
    return {"batches": 0, "mean_batch": nan, "wait_p50": nan, "wait_p99": nan, "model_p50": nan}


def wait_drained(server: Stack | Target) -> None:
    """Until the queue is empty (bounded): a step must not start behind the previous one's work."""
    depth = as_target(server).depth
    deadline = time.monotonic() + DRAIN_WAIT_S
    while time.monotonic() < deadline and depth() > 0:
        time.sleep(0.1)
    time.sleep(0.5)


def run_step(args: argparse.Namespace, raw: Path, server: Stack | Target, index: int, rate: float, n_features: int) -> Step:
    name = f"step-{index:02d}-{rate:.0f}"
    print(f"capacity: step {index}, {rate:.0f} req/s for {args.step_s:g} s", flush=True)
    target = as_target(server)
    meter = CpuMeter(target.roots)
    client = run_client("paced", target.port, raw / f"{name}.csv", raw, timeout_s=args.step_s + 15 + 30, args=[
        "--kind", "predict", "--path", "/predict", "--n-features", str(n_features), "--rate", f"{rate:.3f}",
        "--connections", str(args.pool), "--preopen", str(args.preopen), "--duration-s", str(args.step_s),
        "--grace-s", "15"])
    cores = meter.cores_used()
    cores["client"] = round(client.get("cpu_s", 0) / max(client.get("wall_s", 1), 1e-9), 2)
    t0 = float(client.get("t0_epoch", 0))
    step = Step(index, rate, Responses.read(raw / f"{name}.csv"), client, cores,
                pipeline(target.stack, t0, t0 + args.step_s + 15) if target.stack else no_pipeline())
    s = step.stats
    print(f"capacity: step {index}, {rate:.0f} req/s: achieved {step.achieved:.0f}/s, p50 {ms(s['p50'])} p99 "
          f"{ms(s['p99'])} ms, errors {step.errors}, max backlog {client.get('max_backlog')}: "
          f"{'held' if step.held else 'missed'}", flush=True)
    return step


def search(args: argparse.Namespace, raw: Path, server: Stack | Target, n_features: int) -> list[Step]:
    """Geometric steps up to the first miss, then bisection between the last hold and that miss."""
    target = as_target(server)
    steps: list[Step] = []
    rate, held_rate, missed_rate = args.start_rate, 0.0, 0.0
    while len(steps) < args.max_steps:
        wait_drained(target)
        step = run_step(args, raw, target, len(steps) + 1, rate, n_features)
        steps.append(step)
        if not step.held:
            missed_rate = rate
            break
        held_rate, rate = rate, rate * args.factor
    for _ in range(args.bisect):
        if not missed_rate or len(steps) >= args.max_steps:
            break
        rate = (held_rate + missed_rate) / 2 if held_rate else missed_rate / 2
        wait_drained(target)
        step = run_step(args, raw, target, len(steps) + 1, rate, n_features)
        steps.append(step)
        if step.held:
            held_rate = rate
        else:
            missed_rate = rate
    return steps


def capacity_of(steps: list[Step]) -> float:
    return max((s.rate for s in steps if s.held), default=0.0)


def plot(out: Path, steps: list[Step], echo: Run, flask_echo: Run, args: argparse.Namespace) -> None:
    order = sorted(steps, key=lambda s: s.rate)
    rates = [s.rate for s in order]
    fig, (l_ax, r_ax) = figure(2, f"capacity: /predict, open loop, {args.step_s:g} s per step (micro-batching on)")
    for p, style in zip(PERCENTILES, ("-", "--", ":"), strict=True):
        l_ax.plot(rates, [s.stats[f"p{p}"] for s in order], style, marker="o", markersize=4, label=f"p{p}")
    for s in order:
        if not s.held:
            l_ax.plot([s.rate], [s.stats["p99"]], "x", color="red", markersize=9)
    l_ax.axhline(GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {GOAL_P99_MS:g} ms (x: step missed)")
    l_ax.set_xscale("log")
    l_ax.set_yscale("log")
    l_ax.set_xlabel("offered rate (req/s)")
    l_ax.set_ylabel("latency from due time (ms)")
    l_ax.grid(alpha=0.3, which="both")
    l_ax.legend(fontsize=8, loc="upper left")
    l_ax.set_title("latency percentiles per step", fontsize=10)
    r_ax.plot(rates, [s.achieved for s in order], marker="o", markersize=4, label="achieved (valid 200 answers/s)")
    r_ax.plot(rates, rates, ":", color="grey", label="achieved = offered")
    r_ax.axhline(echo.throughput, color="tab:green", linewidth=1, label=f"echo throughput {echo.throughput:.0f}/s")
    r_ax.axhline(echo.throughput * GOAL_RATIO, color="tab:green", linewidth=0.8, linestyle="--",
                 label=f"goal: capacity >= {GOAL_RATIO:g} x echo")
    r_ax.axhline(flask_echo.throughput, color="tab:purple", linewidth=1,
                 label=f"Flask echo throughput {flask_echo.throughput:.0f}/s")
    capacity = capacity_of(steps)
    if capacity:
        r_ax.axvline(capacity, color="tab:blue", linewidth=0.8, linestyle="--", label=f"capacity {capacity:.0f} req/s")
    r_ax.set_xscale("log")
    r_ax.set_xlabel("offered rate (req/s)")
    r_ax.set_ylabel("req/s")
    r_ax.grid(alpha=0.3, which="both")
    r_ax.legend(fontsize=8, loc="upper left")
    r_ax.set_title("achieved rate per step", fontsize=10)
    save(fig, out / "capacity_steps.png")

    fig, (t_ax, n_ax) = figure(2, "capacity: every step in run order, per second")
    offset = 0.0
    for s in steps:
        seconds = int(np.ceil(float(s.responses.end_s.max()))) if len(s.responses) else 0
        per = s.responses.per_second(seconds)
        xs = [offset + r["second"] for r in per]
        t_ax.plot(xs, [r["p99_ms"] for r in per], "-", color="tab:red" if not s.held else "tab:blue")
        n_ax.plot(xs, [r["responses"] for r in per], "-", color="tab:blue")
        n_ax.plot([offset, offset + args.step_s], [s.rate, s.rate], ":", color="grey")
        t_ax.axvline(offset, color="grey", linewidth=0.5)
        n_ax.axvline(offset, color="grey", linewidth=0.5)
        t_ax.text(offset + 0.2, GOAL_P99_MS, f"{s.rate:.0f}", fontsize=7, rotation=90, va="bottom")
        offset += max(seconds, args.step_s) + 1
    t_ax.axhline(GOAL_P99_MS, color="red", linewidth=0.8)
    t_ax.set_yscale("log")
    t_ax.set_ylabel("p99 per second (ms)")
    t_ax.set_title("p99 per second (blue: step held, red: missed); labels: offered rate", fontsize=10)
    n_ax.set_ylabel("answers per second")
    n_ax.set_xlabel("seconds (steps laid end to end)")
    n_ax.set_title("answers per second (dotted: offered rate)", fontsize=10)
    for ax in (t_ax, n_ax):
        ax.grid(alpha=0.3)
    save(fig, out / "capacity_timeline.png")


def summary(info: dict[str, Any], args: argparse.Namespace, env: dict[str, str], steps: list[Step], echo: Run,
            flask_echo: Run) -> str:
    capacity = capacity_of(steps)
    ratio = capacity / echo.throughput if echo.throughput else float("nan")
    best = max((s for s in steps if s.held), key=lambda s: s.rate, default=None)
    first_miss = min((s for s in steps if not s.held), key=lambda s: s.rate, default=None)
    why = ""
    if first_miss is not None:
        fs = first_miss.stats
        reasons = [f"p99 {ms(fs['p99'])} ms"] if fs["p99"] > GOAL_P99_MS else []
        if first_miss.errors:
            reasons.append(f"{first_miss.errors} answers other than a valid 200 ({dict(first_miss.responses.statuses())})")
        why = (f" The lowest rate that missed was {first_miss.rate:.0f} req/s: " + ", ".join(reasons or ["?"]) + ".")
    return "\n\n".join([
        f"# capacity: /predict at p99 <= {GOAL_P99_MS:g} ms, micro-batching on ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["echo", f"closed loop, {args.connections} keep-alive connections, {args.echo_s:g} s "
                     f"(first {min(2.0, args.echo_s / 4):g} s left out)"],
            ["/predict", f"open loop, steps of {args.step_s:g} s from {args.start_rate:g} req/s, x{args.factor:g} per "
                         f"step, then {args.bisect} bisection step(s); at most {args.max_steps} steps; pool of up to "
                         f"{args.pool} keep-alive connections ({args.preopen} opened first)"],
            ["pass", f"p99 <= {GOAL_P99_MS:g} ms measured from each request's due time, and every answer a valid 200"],
            ["HTTP_PROCESSES x HTTP_THREADS", f"{args.processes} x {args.threads} (defaults 1 x 64); the echo server: "
                                              f"1 process, {args.threads} threads"],
            ["worker", f"1 Celery worker process, QUEUE_WORKERS={args.workers}"],
            ["ENABLE_MICROBATCH / BATCH_SIZE / BATCH_TIMEOUT_MS",
             f"{env.get('ENABLE_MICROBATCH')} / {env.get('BATCH_SIZE', '32')} / {env.get('BATCH_TIMEOUT_MS', '25')}"],
            ["QUEUE_MAXSIZE / CACHE_MODE", f"{env.get('QUEUE_MAXSIZE', '512')} / {env.get('CACHE_MODE', 'busy')} (defaults)"],
            ["body", "`{\"features\": [9 numbers]}`, 1,024 distinct rows in turn"]]),
        "## Results\n\n" + markdown_table(
            ["capacity (req/s)", "echo (responses/s)", "capacity / echo", f"goal >= {GOAL_RATIO:g}",
             "Flask echo (responses/s)", "Flask echo / echo"],
            [[f"{capacity:.0f}", f"{echo.throughput:.0f}", f"**{ratio:.2f}**",
              "met" if ratio >= GOAL_RATIO else "**missed**", f"{flask_echo.throughput:.0f}",
              f"{flask_echo.throughput / echo.throughput:.2f}" if echo.throughput else "n/a"]])
        + (f"\n\nAt {best.rate:.0f} req/s: p50 {ms(best.stats['p50'])} ms, p99 {ms(best.stats['p99'])} ms, achieved "
           f"{best.achieved:.0f}/s." if best else "\n\nNo step held.") + why,
        "### Steps (in run order)\n\n" + markdown_table(
            ["step", "offered/s", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses", "errors",
             "client send delay p99 ms", "max backlog", "connections", "batches", "mean batch",
             "sent -> worker start p50 ms", "sent -> worker start p99 ms", "model call p50 ms", "cores used",
             "verdict"],
            [s.row() for s in steps]),
        "### Echo baseline\n\n" + markdown_table(
            ["endpoint", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses", "invalid", "cores used"],
            [echo.row(), flask_echo.row()]),
        "`sent -> worker start` is from the API's `batch_sent` log event to the worker's "
        "`predict_inference_start` for the same task (the Redis queue, the worker's fetch, the hand-over to a pool "
        "process; log timestamps have 1 ms resolution); `model call` is the worker's `duration_ms`. Together with "
        "the client's p50 they show how much of a request's time is the model and how much is moving it around.\n\n"
        "`client send delay p99` is how late the client itself sent its requests (from the due time to the "
        "send call; it is part of the latency, and large values mean the client did not get a CPU in time on "
        "this shared machine, not that the API was slow). `max backlog` is the most requests that were due but "
        "waiting for a free connection of the client's pool (their wait counts in their latency). `cores used` "
        "is CPU time over wall time during the step (1.0 = one core busy). The machine is shared: a step can "
        "miss because of another job; the load average is below.",
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `capacity_steps.png`: p50/p95/p99 and achieved rate against the offered rate\n"
        "- `capacity_timeline.png`: p99 and answers per second through every step\n"
        "- `capacity_steps.csv`: the figures of every step\n"
        "- `raw/`: every response (`step-<n>-<rate>.csv`, `echo.csv`, `flask-echo.csv`), client stats, process logs",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    info = machine_info()
    out = results_dir("capacity")
    raw = out / "raw"
    print(f"capacity: results in {out}", flush=True)
    env = {"ENABLE_MICROBATCH": "true", "QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads),
           "HTTP_PROCESSES": str(args.processes)}
    with Stack(raw / "logs", worker_processes=1, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        warm_up(stack, n_features)
        echo = echo_baseline(raw, n_features, args.echo_s, args.connections, args.threads)
        flask_echo = echo_baseline(raw, n_features, args.echo_s, args.connections, args.threads, flask=True)
        steps = search(args, raw, stack, n_features)
        stack_env = dict(stack.env)
    write_csv(out / "capacity_steps.csv",
              ["step", "offered_per_s", "achieved_per_s", *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "responses",
               "errors", "max_backlog", "send_delay_p99_ms", "batches", "mean_batch_size", "sent_to_worker_p50_ms",
               "sent_to_worker_p99_ms", "model_call_p50_ms", "held"],
              [[s.index, round(s.rate, 1), round(s.achieved, 1), *(round(s.stats[f"p{p}"], 3) for p in PERCENTILES),
                round(s.stats["max"], 3), len(s.responses), s.errors, s.client.get("max_backlog"),
                s.client.get("send_delay_p99_ms"), s.pipeline["batches"], round(s.pipeline["mean_batch"], 2),
                round(s.pipeline["wait_p50"], 2), round(s.pipeline["wait_p99"], 2), round(s.pipeline["model_p50"], 3),
                int(s.held)] for s in steps])
    plot(out, steps, echo, flask_echo, args)
    (out / "summary.md").write_text(summary(info, args, stack_env, steps, echo, flask_echo))
    capacity = capacity_of(steps)
    ratio = capacity / max(echo.throughput, 1e-9)
    print(f"capacity: {capacity:.0f} req/s at p99 <= {GOAL_P99_MS:g} ms; echo {echo.throughput:.0f}/s; ratio {ratio:.2f} "
          f"(goal >= {GOAL_RATIO:g}: {'met' if ratio >= GOAL_RATIO else 'missed'}); Flask echo "
          f"{flask_echo.throughput:.0f}/s; summary in {out / 'summary.md'}",
          flush=True)
    # Functional failure: an answer that breaks the contract (a 429/504 at high rates is a miss, not a bug).
    broken = sum(s.responses.invalid().total() - int((s.responses.status == 0).sum()) for s in steps)
    broken += echo.responses.invalid().total() + flask_echo.responses.invalid().total()
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
