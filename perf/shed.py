"""Scenario `shed` (issue 2, item 2): with no worker and the interactive queue filled to its bound, 1,000 further
/predict calls, one at a time and then over HTTP_THREADS connections, must all be 429 with `queue_full` and an
integer Retry-After, with p99 <= 20 ms. The fillers carry a short deadline: answered 504, they hold no thread.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf.measure import CpuMeter, Responses, latency_stats
from perf.results import begin, cores_text, counts, figure, goals, ms, plot_statuses, save, setup, style, table, verdict, write_summary
from perf.runs import run_client, scenario_parser
from perf.stack import Stack

GOAL_P99_MS = 20.0
FILL_ROUNDS = 5
FILLER_TIMEOUT_MS = 500  # the deadline of the calls that fill the queue


def fill_queue(stack: Stack, raw: Path, maxsize: int, threads: int, timeout_ms: int) -> dict[str, Any]:
    """Admit /predict calls with a short deadline until the Redis queue length reaches the bound."""
    probe, statuses, runs, started = stack.queue_probe(), Counter[str](), [], time.monotonic()
    for attempt in range(1, FILL_ROUNDS + 1):
        if (missing := maxsize - probe.depth()) <= 0:
            break
        out = raw / f"fill-{attempt}.csv"
        client = run_client("load", stack.port, out, timeout_s=60 + timeout_ms / 1000 * missing, args=[
            "--connections", str(min(threads, missing)), "--requests", str(missing), "--duration-s", "60",
            "--header", f"X-Request-Timeout-Ms:{timeout_ms}"])
        responses = Responses.read(out, client["t0_epoch"])
        runs.append(responses)
        statuses.update(responses.statuses())
    return {"depth": probe.depth(), "rounds": len(runs), "statuses": dict(statuses), "runs": runs,
            "seconds": round(time.monotonic() - started, 2)}


def measure(stack: Stack, raw: Path, name: str, calls: int, connections: int) -> dict[str, Any]:
    out = raw / f"{name.replace(' ', '-')}.csv"
    assert stack.redis.process is not None
    meter = CpuMeter({"api": stack.api.pid, "redis": stack.redis.process.pid})
    client = run_client("load", stack.port, out, timeout_s=180, args=[
        "--connections", str(connections), "--requests", str(calls), "--duration-s", "120"])
    cores = meter.cores_used()
    responses = Responses.read(out)
    span = float(responses.end_s.max()) - float(responses.start_s.min()) if len(responses) else 0.0
    shed_ok = sum(s == 429 and ok and d.startswith("queue_full ")
                  for s, ok, d in zip(responses.status, responses.valid, responses.detail, strict=True))
    return {"name": name, "connections": connections, "responses": responses, "shed_ok": int(shed_ok),
            "on_clock": Responses.read(out, client["t0_epoch"]),
            "rate": len(responses) / max(span, 1e-9) if len(responses) else 0.0,
            "stats": latency_stats(responses.latency_ms),
            "retry_after": Counter(d.split("retry_after=", 1)[1] for d in responses.detail if "retry_after=" in d),
            "cores": {**cores, "client": round(client.get("cpu_s", 0) / max(client.get("wall_s", 1), 1e-9), 2)}}


def plot(out: Path, phases: list[dict[str, Any]], fill: dict[str, Any]) -> None:
    fig, (by_call, cdf) = figure(2, "shed: latency of /predict answered 429 with the queue full")
    for phase in phases:
        latency = phase["responses"].latency_ms
        by_call.plot(np.arange(latency.size), latency, ".", markersize=2, label=f"{phase['name']} ({phase['connections']} conn.)")
        cdf.plot(np.sort(latency), np.linspace(0, 100, latency.size, endpoint=False), label=phase["name"])
    by_call.axhline(GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {GOAL_P99_MS:g} ms")
    style(by_call, xlabel="call (in order sent)", ylabel="latency (ms)", log="y", legend="best")
    cdf.axvline(GOAL_P99_MS, color="red", linewidth=0.8)
    cdf.axhline(99, color="grey", linewidth=0.6, linestyle=":")
    style(cdf, xlabel="latency (ms)", ylabel="percent of calls at or below", log="x", legend="best")
    save(fig, out / "shed_latency.png")

    fig, (timeline,) = figure(1, "shed: status codes over time (per 100 ms), filling then the two phases", height=3.6)
    spans = [("fill", run) for run in fill["runs"]] + [(p["name"], p["on_clock"]) for p in phases]
    t0 = min(float(run.start_s.min()) for _, run in spans if len(run))
    every = Responses.concat([run for _, run in spans])
    every.start_s -= t0
    plot_statuses(timeline, every, "", float(every.end_s.max()), bin_s=0.1)
    for name, run in spans:
        if len(run):
            first, last = float(run.start_s.min()) - t0, float(run.end_s.max()) - t0
            timeline.axvspan(first, last, alpha=0.06, color="grey")
            timeline.text((first + last) / 2, timeline.get_ylim()[1] * 0.92, name, ha="center", fontsize=8)
    style(timeline, xlabel="seconds since the first filler call", ylabel="responses per 100 ms", legend="center left")
    save(fig, out / "shed_status.png")


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("shed", __doc__, "same calls (they take seconds); kept for the runner", threads=16, workers=0)
    parser.add_argument("--maxsize", type=int, default=64, help="QUEUE_MAXSIZE for this stack")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per phase")
    args = parser.parse_args(argv)
    info, out, raw = begin("shed")
    # No response cache: a cached answer would be a 200, and this scenario measures the shedding decision.
    env = {"QUEUE_MAXSIZE": str(args.maxsize), "HTTP_THREADS": str(args.threads), "USE_BOUNDED_QUEUE": "true",
           "CACHE_MODE": "off"}
    with Stack(raw / "logs", workers=0, env=env) as stack:
        fill = fill_queue(stack, raw, args.maxsize, args.threads, FILLER_TIMEOUT_MS)
        print(f"shed: queue length {fill['depth']} after filling ({fill['statuses']})", flush=True)
        if fill["depth"] < args.maxsize:
            print(f"shed: could not fill the queue to {args.maxsize}; see {raw}", flush=True)
            return 1
        phases = [measure(stack, raw, "one at a time", args.calls, 1),
                  measure(stack, raw, "concurrent", args.calls, args.threads)]
        depth_after = stack.queue_probe().depth()
    plot(out, phases, fill)
    invalid: Counter[str] = sum((p["responses"].invalid() for p in phases), Counter())
    write_summary(out, "shed: a full queue answers 429 fast", info, __doc__, [
        setup(args, env),
        goals("shed", ["goal", "phase", "this run", "verdict"], [
            row for p in phases for row in (
                ["every call 429 with queue_full and an integer Retry-After", p["name"], f"{p['shed_ok']}/{p['stats']['count']}",
                 "met" if p["shed_ok"] == p["stats"]["count"] == args.calls else "**missed**"],
                [f"p99 <= {GOAL_P99_MS:g} ms", p["name"], f"{ms(p['stats']['p99'])} ms", verdict(p["stats"]["p99"], GOAL_P99_MS)])]),
        f"## Filling\n\n{sum(fill['statuses'].values())} filler calls in {fill['rounds']} round(s), {fill['seconds']} s; "
        f"statuses {fill['statuses']}; queue length (`tasks.queues.QueueProbe`) {fill['depth']} before the measured "
        f"calls and {depth_after} after them (429s enqueue nothing).",
        "## Results\n\n" + table(out / "shed_summary.csv",
            ["phase", "connections", "calls", "calls_per_s", "shed_ok (429, queue_full, integer Retry-After)", "statuses",
             "p50_ms", "p95_ms", "p99_ms", "max_ms", "retry_after_values", "cores_used"],
            [[p["name"], p["connections"], p["stats"]["count"], f"{p['rate']:.0f}", f"{p['shed_ok']}/{p['stats']['count']}",
              counts(p["responses"].statuses()), *(ms(p["stats"][k]) for k in ("p50", "p95", "p99", "max")),
              counts({f"{k} s": v for k, v in p["retry_after"].items()}), cores_text(p["cores"])] for p in phases]),
        f"Invalid responses: {counts(invalid)}."],
        {"shed_latency.png": "latency per call and its distribution, per phase",
         "shed_status.png": "status codes over time: the filler calls, then each phase", "shed_summary.csv": "the results table"})
    return 0 if all(p["shed_ok"] == p["stats"]["count"] == args.calls for p in phases) else 1
