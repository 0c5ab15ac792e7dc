"""Scenario `capacity`: the highest /predict rate, micro-batching on, answered with p99 <= 100 ms and no errors
(issue 4, item 2: at least half the bare-waitress echo throughput of the same run), found with the open-loop
client: geometric steps up to the first miss, then bisection.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perf.measure import PERCENTILES, Responses, latency_stats, log_events, percentile
from perf.results import begin, cores_text, counts, figure, goals, markdown_table, ms, save, setup, style, table, write_summary
from perf.runs import Run, drive, echo_baseline, parse, scenario_parser, server_env, wait_drained, warm_up
from perf.stack import Stack

GOAL_P99_MS = 100.0
GOAL_RATIO = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = scenario_parser("capacity", __doc__, "4 s steps, 8 s echo run, one bisection step", threads=32, processes=2, pool=256,
                             preopen=32)
    parser.add_argument("--step-s", type=float, default=None, help="length of each rate step (default 8, --quick 4)")
    parser.add_argument("--echo-s", type=float, default=None, help="length of the echo run (default 20, --quick 8)")
    parser.add_argument("--start-rate", type=float, default=100.0, help="offered rate of the first step (req/s)")
    parser.add_argument("--factor", type=float, default=1.25, help="rate multiplier between steps while they hold")
    parser.add_argument("--bisect", type=int, default=None, help="bisection steps after the first miss (default 3, --quick 1)")
    parser.add_argument("--max-steps", type=int, default=24, help="bound on the number of steps")
    parser.add_argument("--connections", type=int, default=64, help="echo: closed-loop connections")
    args = parse(parser, argv, step_s=(8.0, 4.0), echo_s=(20.0, 8.0), bisect=(3, 1))
    if args.factor <= 1 or args.start_rate <= 0 or args.max_steps < 1:
        parser.error("--factor must be > 1, --start-rate > 0 and --max-steps >= 1")
    return args


@dataclass
class Target:
    """What a search drives: a server on `port`, the process trees whose CPU a step reports, the length of its
    queue (left to empty between steps) and, for this project's stack, the logs `pipeline` reads."""

    port: int
    roots: dict[str, int]
    depth: Callable[[], int] = lambda: 0
    stack: Stack | None = None


def as_target(stack: Stack) -> Target:
    return Target(stack.port, {"api": stack.api.pid, **{w.name: w.pid for w in stack.workers}}, stack.queue_probe().depth,
                  stack)


def pipeline(stack: Stack | None, since_epoch: float, until_epoch: float) -> dict[str, float]:
    """Where a batch's time went, from the logs: the API's `batch_sent` to the worker's `predict_inference_start`
    (the Redis queue, the worker's fetch, the hand-over to a pool process), and the model call
    (`predict_inference_end.duration_ms`), for batches sent in the window."""
    if stack is None:
        return {"batches": 0, **dict.fromkeys(("mean_batch", "wait_p50", "wait_p99", "model_p50"), float("nan"))}
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
    return {"batches": len(sent), "mean_batch": float(np.mean(sizes)) if sizes else float("nan"),
            "wait_p50": percentile(waits, 50), "wait_p99": percentile(waits, 99), "model_p50": percentile(durations, 50)}


@dataclass
class Step:
    index: int
    rate: float
    run: Run
    pipeline: dict[str, float]

    @property
    def responses(self) -> Responses:
        return self.run.responses

    @property
    def stats(self) -> dict[str, float]:
        return latency_stats(self.responses.latency_ms)

    @property
    def answers(self) -> int:
        """Valid 200s."""
        return int(self.responses.ok.sum())

    @property
    def errors(self) -> int:
        return int((~self.responses.ok).sum())

    @property
    def achieved(self) -> float:
        span = float(self.responses.end_s.max()) if len(self.responses) else 0.0
        return float(self.responses.ok.sum()) / span if span > 0 else 0.0

    @property
    def held(self) -> bool:
        return len(self.responses) > 0 and self.errors == 0 and self.stats["p99"] <= GOAL_P99_MS

    def row(self) -> list[Any]:
        s, p, client = self.stats, self.pipeline, self.run.client
        return [self.index, f"{self.rate:.0f}", f"{self.achieved:.0f}", *(ms(s[k]) for k in ("p50", "p95", "p99", "max")),
                counts(self.responses.statuses()), self.errors, client.get("send_delay_p99_ms", "?"),
                client.get("max_backlog", "?"), client.get("connects", "?"), f"{p['batches']:.0f}",
                f"{p['mean_batch']:.1f}", ms(p["wait_p50"]), ms(p["wait_p99"]), ms(p["model_p50"]),
                cores_text(self.run.cores), "held" if self.held else "**missed**"]


STEP_HEADERS = ["step", "offered/s", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses", "errors",
                "client send delay p99 ms", "max backlog", "connections", "batches", "mean batch",
                "sent -> worker start p50 ms", "sent -> worker start p99 ms", "model call p50 ms", "cores used", "verdict"]


def run_step(args: argparse.Namespace, raw: Path, target: Target, index: int, rate: float) -> Step:
    print(f"capacity: step {index}, {rate:.0f} req/s for {args.step_s:g} s", flush=True)
    run = drive(raw, f"step-{index:02d}-{rate:.0f}", target.port, target.roots, mode="paced", seconds=args.step_s,
                grace_s=15, args=["--rate", f"{rate:.3f}", "--connections", str(args.pool), "--preopen", str(args.preopen)])
    t0 = float(run.client.get("t0_epoch", 0))
    step = Step(index, rate, run, pipeline(target.stack, t0, t0 + args.step_s + 15))
    print(f"capacity: step {index}, {rate:.0f} req/s: achieved {step.achieved:.0f}/s, p50 {ms(step.stats['p50'])} p99 "
          f"{ms(step.stats['p99'])} ms, errors {step.errors}: {'held' if step.held else 'missed'}", flush=True)
    return step


def search(args: argparse.Namespace, raw: Path, target: Target) -> list[Step]:
    """Geometric steps up to the first miss, then bisection between the last hold and that miss."""
    steps: list[Step] = []
    rate, held_rate, missed_rate = args.start_rate, 0.0, 0.0
    while len(steps) < args.max_steps and not missed_rate:
        wait_drained(target.depth)
        steps.append(run_step(args, raw, target, len(steps) + 1, rate))
        if steps[-1].held:
            held_rate, rate = rate, rate * args.factor
        else:
            missed_rate = rate
    for _ in range(args.bisect):
        if not missed_rate or len(steps) >= args.max_steps:
            break
        rate = (held_rate + missed_rate) / 2 if held_rate else missed_rate / 2
        wait_drained(target.depth)
        steps.append(run_step(args, raw, target, len(steps) + 1, rate))
        held_rate, missed_rate = (rate, missed_rate) if steps[-1].held else (held_rate, rate)
    return steps


def capacity_of(steps: list[Step]) -> float:
    return max((s.rate for s in steps if s.held), default=0.0)


def plot(out: Path, steps: list[Step], echo: Run, flask_echo: Run, args: argparse.Namespace) -> None:
    order = sorted(steps, key=lambda s: s.rate)
    rates = [s.rate for s in order]
    fig, (l_ax, r_ax) = figure(2, f"capacity: /predict, open loop, {args.step_s:g} s per step (micro-batching on)")
    for p, line in zip(PERCENTILES, ("-", "--", ":"), strict=True):
        l_ax.plot(rates, [s.stats[f"p{p}"] for s in order], line, marker="o", markersize=4, label=f"p{p}")
    for s in order:
        if not s.held:
            l_ax.plot([s.rate], [s.stats["p99"]], "x", color="red", markersize=9)
    l_ax.axhline(GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {GOAL_P99_MS:g} ms (x: step missed)")
    style(l_ax, "latency percentiles per step", "offered rate (req/s)", "latency from due time (ms)", log="xy",
          legend="upper left")
    r_ax.plot(rates, [s.achieved for s in order], marker="o", markersize=4, label="achieved (valid 200 answers/s)")
    r_ax.plot(rates, rates, ":", color="grey", label="achieved = offered")
    r_ax.axhline(echo.throughput, color="tab:green", linewidth=1, label=f"echo throughput {echo.throughput:.0f}/s")
    r_ax.axhline(echo.throughput * GOAL_RATIO, color="tab:green", linewidth=0.8, linestyle="--",
                 label=f"goal: capacity >= {GOAL_RATIO:g} x echo")
    r_ax.axhline(flask_echo.throughput, color="tab:purple", linewidth=1,
                 label=f"Flask echo throughput {flask_echo.throughput:.0f}/s")
    if capacity := capacity_of(steps):
        r_ax.axvline(capacity, color="tab:blue", linewidth=0.8, linestyle="--", label=f"capacity {capacity:.0f} req/s")
    style(r_ax, "achieved rate per step", "offered rate (req/s)", "req/s", log="x", legend="upper left")
    save(fig, out / "capacity_steps.png")

    fig, (t_ax, n_ax) = figure(2, "capacity: every step in run order, per second")
    offset = 0.0
    for s in steps:
        seconds = int(np.ceil(float(s.responses.end_s.max()))) if len(s.responses) else 0
        per = s.responses.per_second(seconds)
        xs = [offset + r["second"] for r in per]
        t_ax.plot(xs, [r["p99_ms"] for r in per], "-", color="tab:blue" if s.held else "tab:red")
        n_ax.plot(xs, [r["responses"] for r in per], "-", color="tab:blue")
        n_ax.plot([offset, offset + args.step_s], [s.rate, s.rate], ":", color="grey")
        for ax in (t_ax, n_ax):
            ax.axvline(offset, color="grey", linewidth=0.5)
        t_ax.text(offset + 0.2, GOAL_P99_MS, f"{s.rate:.0f}", fontsize=7, rotation=90, va="bottom")
        offset += max(seconds, args.step_s) + 1
    t_ax.axhline(GOAL_P99_MS, color="red", linewidth=0.8)
    style(t_ax, "p99 per second (blue: step held, red: missed); labels: offered rate", "", "p99 per second (ms)",
          log="y", legend=None)
    style(n_ax, "answers per second (dotted: offered rate)", "seconds (steps laid end to end)", "answers per second",
          legend=None)
    save(fig, out / "capacity_timeline.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("capacity")
    with Stack(raw / "logs", env=server_env(args, ENABLE_MICROBATCH="true")) as stack:
        warm_up(stack.url)
        echo = echo_baseline(raw, args.echo_s, args.connections, args.threads)
        flask_echo = echo_baseline(raw, args.echo_s, args.connections, args.threads, flask=True)
        steps = search(args, raw, as_target(stack))
        env = stack.overrides
    plot(out, steps, echo, flask_echo, args)
    capacity = capacity_of(steps)
    ratio = capacity / max(echo.throughput, 1e-9)
    best = max((s for s in steps if s.held), key=lambda s: s.rate, default=None)
    miss = min((s for s in steps if not s.held), key=lambda s: s.rate, default=None)
    why = "" if miss is None else (f" The lowest rate that missed was {miss.rate:.0f} req/s: " + ", ".join(
        ([f"p99 {ms(miss.stats['p99'])} ms"] if miss.stats["p99"] > GOAL_P99_MS else [])
        + ([f"{miss.errors} answers other than a valid 200 ({dict(miss.responses.statuses())})"] if miss.errors else [])) + ".")
    write_summary(out, f"capacity: /predict at p99 <= {GOAL_P99_MS:g} ms, micro-batching on", info, __doc__, [
        setup(args, env),
        goals("capacity", ["goal", "this run", "verdict"], [
            [f"capacity (p99 <= {GOAL_P99_MS:g} ms from the due time, every answer a valid 200) >= {GOAL_RATIO:g}x the echo",
             f"{capacity:.0f} / {echo.throughput:.0f} = **{ratio:.2f}**", "met" if ratio >= GOAL_RATIO else "**missed**"]]),
        "## Results\n\n" + markdown_table(
            ["capacity (req/s)", "echo (responses/s)", "capacity / echo", "Flask echo (responses/s)", "Flask echo / echo"],
            [[f"{capacity:.0f}", f"{echo.throughput:.0f}", f"**{ratio:.2f}**", f"{flask_echo.throughput:.0f}",
              f"{flask_echo.throughput / max(echo.throughput, 1e-9):.2f}"]])
        + (f"\n\nAt {best.rate:.0f} req/s: p50 {ms(best.stats['p50'])} ms, p99 {ms(best.stats['p99'])} ms, achieved "
           f"{best.achieved:.0f}/s." if best else "\n\nNo step held.") + why,
        "### Steps (in run order)\n\n" + table(out / "capacity_steps.csv", STEP_HEADERS, [s.row() for s in steps])
        + "\n\nWhat the columns mean: perf/README.md, `capacity`.",
        "### Echo baseline\n\n" + markdown_table(Run.HEADERS, [echo.row(), flask_echo.row()])],
        {"capacity_steps.png": "p50/p95/p99 and achieved rate against the offered rate",
         "capacity_timeline.png": "p99 and answers per second through every step",
         "capacity_steps.csv": "the steps table"})
    # Functional failure: an answer that breaks the contract (a 429/504 at high rates is a miss, not a bug).
    broken = sum(s.responses.broken() for s in steps) + echo.responses.invalid().total() + flask_echo.responses.invalid().total()
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
