"""Scenario `shed`: with no worker and the interactive queue at its bound, /predict answers 429 fast.

Issue 2, "what must hold" item 2: every further call is 429 with an integer `Retry-After` and the
`queue_full` error body, and the decision is cheap (goal: p99 <= 20 ms over 1,000 calls).

How the queue is filled without skewing the measurement: admitted /predict calls wait for a result
that, with no worker, never comes, each holding a waitress thread until its deadline. So the filler
calls carry `X-Request-Timeout-Ms` (a short deadline): each is admitted, enqueued, answered 504 when
its deadline passes, and its message stays in Redis (LLEN counts expired messages until a worker
pulls one; there is none). The scenario reads the queue length from Redis until it reaches the bound
and waits for every filler's answer, so when the measured calls start no thread is held and none of
them waits behind a filler. The 1,000 calls run twice: one at a time on one keep-alive connection
(the cost of one decision) and over HTTP_THREADS concurrent connections (the decision under contention).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf.common import (
    STATUS_COLOURS,
    CpuMeter,
    Responses,
    Stack,
    figure,
    latency_stats,
    machine_info,
    machine_markdown,
    markdown_table,
    ms,
    results_dir,
    run_client,
    save,
    stop_on_sigterm,
    verdict,
    write_csv,
)

GOAL_P99_MS = 20.0
FILL_ROUNDS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario shed", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="same calls (they take seconds); kept for the runner")
    parser.add_argument("--maxsize", type=int, default=64, help="QUEUE_MAXSIZE for this stack")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per phase")
    parser.add_argument("--threads", type=int, default=16, help="HTTP_THREADS of the API")
    parser.add_argument("--filler-timeout-ms", type=int, default=500, help="deadline of the calls that fill the queue")
    return parser.parse_args(argv)


def fill_queue(stack: Stack, raw: Path, maxsize: int, n_features: int, threads: int, timeout_ms: int) -> dict[str, Any]:
    """Admit /predict calls with a short deadline until the Redis queue length reaches the bound."""
    probe = stack.queue_probe()
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    rounds = 0
    runs = []
    for attempt in range(1, FILL_ROUNDS + 1):
        missing = maxsize - probe.depth()
        if missing <= 0:
            break
        rounds = attempt
        out = raw / f"fill-{attempt}.csv"
        client = run_client("load", stack.port, out, raw, timeout_s=60 + timeout_ms / 1000 * missing, args=[
            "--kind", "predict", "--n-features", str(n_features), "--connections", str(min(threads, missing)),
            "--requests", str(missing), "--duration-s", "60", "--header", f"X-Request-Timeout-Ms:{timeout_ms}"])
        responses = Responses.read(out)
        responses.start_s += client["t0_epoch"]
        runs.append(responses)
        statuses.update(responses.statuses())
    depth = probe.depth()
    return {"depth": depth, "rounds": rounds, "statuses": dict(statuses), "runs": runs,
            "seconds": round(time.monotonic() - started, 2)}


def measure(stack: Stack, raw: Path, name: str, calls: int, connections: int, n_features: int) -> dict[str, Any]:
    out = raw / f"{name.replace(' ', '-')}.csv"
    meter = CpuMeter({"api": stack.api.pid, "redis": stack.services[0].process.pid})  # type: ignore[union-attr]
    client = run_client("load", stack.port, out, raw, timeout_s=180, args=[
        "--kind", "predict", "--n-features", str(n_features), "--connections", str(connections),
        "--requests", str(calls), "--duration-s", "120"])
    cores = meter.cores_used()
    responses = Responses.read(out)
    rate = len(responses) / max(float(responses.end_s.max()) - float(responses.start_s.min()), 1e-9) if len(responses) else 0.0
    timeline = Responses.read(out)
    timeline.start_s += client["t0_epoch"]
    shed_ok = np.array([s == 429 and ok and d.startswith("queue_full ")
                        for s, ok, d in zip(responses.status, responses.valid, responses.detail, strict=True)], dtype=bool)
    retry_after = Counter(d.split("retry_after=", 1)[1] for d in responses.detail if "retry_after=" in d)
    return {"name": name, "connections": connections, "responses": responses, "shed_ok": int(shed_ok.sum()),
            "rate": rate, "timeline": timeline,
            "stats": latency_stats(responses.latency_ms), "retry_after": dict(retry_after), "client": client,
            "cores": {**cores, "client": round(client.get("cpu_s", 0) / max(client.get("wall_s", 1), 1e-9), 2)}}


def plot(out: Path, phases: list[dict[str, Any]], fill: dict[str, Any]) -> list[Path]:
    fig, (by_call, cdf) = figure(2, "shed: latency of /predict answered 429 with the queue full")
    for phase in phases:
        latency = phase["responses"].latency_ms
        by_call.plot(np.arange(latency.size), latency, ".", markersize=2, label=f"{phase['name']} ({phase['connections']} conn.)")
        cdf.plot(np.sort(latency), np.linspace(0, 100, latency.size, endpoint=False), label=phase["name"])
    for ax in (by_call, cdf):
        ax.grid(alpha=0.3)
    by_call.axhline(GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {GOAL_P99_MS:g} ms")
    by_call.set_xlabel("call (in order sent)")
    by_call.set_ylabel("latency (ms)")
    by_call.set_yscale("log")
    by_call.legend(fontsize=8)
    cdf.axvline(GOAL_P99_MS, color="red", linewidth=0.8)
    cdf.axhline(99, color="grey", linewidth=0.6, linestyle=":")
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("percent of calls at or below")
    cdf.legend(fontsize=8)
    latency_png = save(fig, out / "shed_latency.png")

    fig, (timeline,) = figure(1, "shed: status codes over time (per 100 ms), filling then the two phases", height=3.6)
    spans = [("fill", run) for run in fill["runs"]] + [(p["name"], p["timeline"]) for p in phases]
    t0 = min(float(run.start_s.min()) for _, run in spans if len(run))
    end = max(float(run.end_s.max()) for _, run in spans if len(run)) - t0
    edges = np.arange(0, end + 0.1, 0.1)
    ends = np.concatenate([run.end_s - t0 for _, run in spans])
    codes = np.concatenate([run.status for _, run in spans])
    bottom = np.zeros(max(len(edges) - 1, 1))
    for code in sorted(set(codes.tolist())):
        counts, _ = np.histogram(ends[codes == code], bins=edges)
        name = "transport error" if code == 0 else str(code)
        timeline.bar(edges[:-1], counts, width=0.1, align="edge", bottom=bottom[:counts.size], label=name,
                     color=STATUS_COLOURS.get(name))
        bottom[:counts.size] += counts
    for name, run in spans:
        if len(run):
            first, last = float(run.start_s.min()) - t0, float(run.end_s.max()) - t0
            timeline.axvspan(first, last, alpha=0.06, color="grey")
            timeline.text((first + last) / 2, timeline.get_ylim()[1] * 0.92, name, ha="center", fontsize=8)
    timeline.set_xlabel("seconds since the first filler call")
    timeline.set_ylabel("responses per 100 ms")
    timeline.grid(alpha=0.3, axis="y")
    timeline.legend(fontsize=8, loc="center left")
    return [latency_png, save(fig, out / "shed_status.png")]


def summary(out: Path, info: dict[str, Any], args: argparse.Namespace, fill: dict[str, Any], depth_after: int,
            phases: list[dict[str, Any]]) -> str:
    rows = []
    for p in phases:
        s = p["stats"]
        rows.append([p["name"], p["connections"], s["count"], f"{p['rate']:.0f}", f"{p['shed_ok']}/{s['count']}",
                     ", ".join(f"{k}: {v}" for k, v in sorted(p["responses"].statuses().items())),
                     ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), ms(s["max"]), verdict(s["p99"], GOAL_P99_MS),
                     ", ".join(f"{k} s: {v}" for k, v in sorted(p["retry_after"].items())) or "none",
                     f"API {p['cores']['api']}, Redis {p['cores']['redis']}, client {p['cores']['client']}"])
    invalid: Counter[str] = Counter()
    for p in phases:
        invalid.update(p["responses"].invalid())
    return "\n\n".join([
        f"# shed: a full queue answers 429 fast ({info['date']})",
        __doc__.split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["workers", "none (the queue cannot drain)"], ["QUEUE_MAXSIZE", args.maxsize], ["HTTP_THREADS", args.threads],
            ["CACHE_MODE", "off (the shedding decision, not the cache, is measured)"],
            ["filler deadline", f"X-Request-Timeout-Ms: {args.filler_timeout_ms}"],
            ["measured calls", f"{args.calls} per phase, POST /predict with 9-feature rows, no deadline header"]]),
        "## Filling\n\n" + f"{sum(fill['statuses'].values())} filler calls in {fill['rounds']} round(s), "
        f"{fill['seconds']} s; statuses {fill['statuses']}; queue length (the API's own probe, "
        "`tasks.queues.QueueProbe`: LLEN over the queue's keys plus requests inside batch messages) "
        f"{fill['depth']} before the measured calls and {depth_after} after them (429s enqueue nothing).",
        "## Results\n\n" + markdown_table(
            ["phase", "connections", "calls", "calls/s", "429 + queue_full + integer Retry-After", "statuses", "p50 ms",
             "p95 ms", "p99 ms", "max ms", f"p99 <= {GOAL_P99_MS:g} ms", "Retry-After values", "cores used"], rows),
        "Invalid responses: " + (", ".join(f"{k} x{v}" for k, v in invalid.items()) if invalid else "none") + ".",
        "Latency is measured by the client from sending the request to the last byte of the response, over "
        "loopback keep-alive connections. `cores used` is CPU time over wall time during the phase (1.0 = one core).",
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `shed_latency.png`: latency per call and its distribution, per phase\n"
        "- `shed_status.png`: status codes over time: the filler calls, then each phase\n"
        "- `shed_summary.csv`: the table above\n- `raw/`: every response (`*.csv`), client stats, process logs",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    info = machine_info()
    out = results_dir("shed")
    raw = out / "raw"
    # No response cache: a cached answer would be a 200, and this scenario measures the shedding decision.
    env = {"QUEUE_MAXSIZE": str(args.maxsize), "HTTP_THREADS": str(args.threads), "USE_BOUNDED_QUEUE": "true",
           "CACHE_MODE": "off"}
    print(f"shed: starting a stack with no worker, QUEUE_MAXSIZE={args.maxsize} (results in {out})", flush=True)
    with Stack(raw / "logs", worker_processes=0, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        fill = fill_queue(stack, raw, args.maxsize, n_features, args.threads, args.filler_timeout_ms)
        print(f"shed: queue length {fill['depth']} after filling ({fill['statuses']})", flush=True)
        if fill["depth"] < args.maxsize:
            print(f"shed: could not fill the queue to {args.maxsize}; see {raw}", flush=True)
            return 1
        phases = [measure(stack, raw, "one at a time", args.calls, 1, n_features),
                  measure(stack, raw, "concurrent", args.calls, args.threads, n_features)]
        depth_after = stack.queue_probe().depth()
    write_csv(out / "shed_summary.csv", ["phase", "connections", "calls", "shed_ok", "p50_ms", "p95_ms", "p99_ms", "max_ms"],
              [[p["name"], p["connections"], p["stats"]["count"], p["shed_ok"],
                *(round(p["stats"][k], 3) for k in ("p50", "p95", "p99", "max"))] for p in phases])
    plot(out, phases, fill)
    (out / "summary.md").write_text(summary(out, info, args, fill, depth_after, phases))
    failed = False
    for p in phases:
        s = p["stats"]
        print(f"shed [{p['name']}, {p['connections']} conn.]: {p['shed_ok']}/{s['count']} answered 429 queue_full with "
              f"an integer Retry-After; latency p50 {ms(s['p50'])} p95 {ms(s['p95'])} p99 {ms(s['p99'])} "
              f"max {ms(s['max'])} ms (goal p99 <= {GOAL_P99_MS:g} ms: {verdict(s['p99'], GOAL_P99_MS).strip('*')})")
        failed |= p["shed_ok"] != s["count"] or s["count"] != args.calls
    print(f"shed: summary in {out / 'summary.md'}", flush=True)
    return 1 if failed else 0
