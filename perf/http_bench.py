"""Scenario `http` (issue 2, items 5 and 6): /predict at 64 keep-alive connections next to the bare-waitress echo
driven the same way, with /healthz probed every 20 ms meanwhile on a fresh connection (goal p99 <= 20 ms) and a
kept-alive one, and alone with the API idle (and scenario `echo`: the echo alone).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from perf import echo as echo_module
from perf import results
from perf.measure import Responses, Sampler
from perf.runs import Run, drive, echo_baseline, parse, probing, run_client, scenario_parser, server_env, stats_of, warm_up
from perf.stack import Stack

HEALTHZ_GOAL_P99_MS = 20.0
PROBES = {"healthz": ("/healthz, fresh connection", []), "healthz-keepalive": ("/healthz, keep-alive", ["--keepalive"])}
IDLE_PROBE_S = 3.0


def parse_args(argv: list[str] | None, scenario: str = "http") -> argparse.Namespace:
    parser = scenario_parser(scenario, __doc__, "8 s runs instead of 20 s", threads=16, runs=True)
    parser.add_argument("--connections", type=int, default=64)
    return parse(parser, argv)


def measure(args: argparse.Namespace, raw: Path, stack: Stack) -> tuple[Run, list[Run], list[tuple[float, int]]]:
    """/healthz with the API idle; then /predict with the two /healthz probes and the queue length beside it."""
    probe = ["--path", "/healthz", "--interval-ms", "20", "--duration-s"]
    client = run_client("probe", stack.port, raw / "healthz-idle.csv", timeout_s=IDLE_PROBE_S + 30, args=[*probe, str(IDLE_PROBE_S)])
    idle = Run("/healthz, idle API (fresh connection)", Responses.read(raw / "healthz-idle.csv"), client, None, (0.0, IDLE_PROBE_S))
    print(f"http: /predict, {args.connections} connections for {args.duration_s:g} s", flush=True)
    probes = {name: [*probe, str(args.duration_s), *extra] for name, (_, extra) in PROBES.items()}
    with probing(stack.port, raw, probes) as files, Sampler(stack.queue_probe().depth) as depth:
        predict = drive(raw, "predict", stack.port, stack.roots(), seconds=args.duration_s, warmup_s=args.warmup_s,
                        args=["--connections", str(args.connections)], label="/predict")
    t0 = predict.client["t0_epoch"]
    health = []
    for name, (label, _) in PROBES.items():  # the probes started a moment before the /predict client: on its clock
        probed = Responses.read(files[name], stats_of(files[name])["t0_epoch"] - t0)
        health.append(Run(label, probed, stats_of(files[name]), None, (args.warmup_s, args.duration_s)))
    return predict, [*health, idle], [(t + depth.t0_epoch - t0, d) for t, d in depth.samples]


def plot(out: Path, args: argparse.Namespace, predict: Run, echo: Run, health: list[Run], depth: list[tuple[float, int]]) -> None:
    title = f"http: {args.connections} keep-alive connections, {args.duration_s:g} s each"
    fig, (p_ax, e_ax, h_ax) = results.figure(3, f"{title}: latency percentiles per second")
    results.plot_percentiles(p_ax, predict.per_second, "/predict", title="/predict")
    results.plot_percentiles(e_ax, echo.per_second, "echo", title=echo.name)
    for run, colour in zip(health[:2], ("tab:blue", "tab:green"), strict=True):
        h_ax.plot(run.responses.end_s, run.responses.latency_ms, ".", markersize=2.5, color=colour, alpha=0.6,
                  label=f"{run.name}: each probe")
        h_ax.plot([r["second"] + 0.5 for r in run.per_second], [r["p99_ms"] for r in run.per_second], "-",
                  color=colour, linewidth=1.2, label=f"{run.name}: p99 per second")
    h_ax.axhline(HEALTHZ_GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {HEALTHZ_GOAL_P99_MS:g} ms")
    h_ax.axvspan(0, args.duration_s, color="tab:orange", alpha=0.08, label="/predict load running")
    results.style(h_ax, f"/healthz while /predict runs at {args.connections} connections", ylabel="latency (ms)", log="y", below=3)
    results.save(fig, out / "http_latency.png")
    fig, (p_ax, e_ax, q_ax) = results.figure(3, f"{title}: throughput per second")
    for ax, run in ((p_ax, predict), (e_ax, echo)):
        results.plot_throughput(ax, {run.name: run}, args.warmup_s, f"{run.name}: responses per second")
    q_ax.plot([t for t, _ in depth], [d for _, d in depth], color="tab:purple")
    results.style(q_ax, "interactive queue length (requests waiting in Redis) during the /predict run: above 0, the workers "
                  "are the limit", ylabel="requests waiting", legend=None, bottom=0)
    results.save(fig, out / "http_throughput.png")
    fig, axes = results.figure(2, f"{title}: status codes per second")
    for ax, run in zip(axes, (predict, echo), strict=True):
        results.plot_statuses(ax, run.responses, f"{run.name}: responses per second by status code", len(run.per_second))
    results.save(fig, out / "http_status.png")


def write_tables(out: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    results.write_csv(out / "http_summary.csv", ["endpoint", "connections", "window_s", *Run.CSV_COLUMNS, "client_cores"],
                      [[r.name, 1 if r.name.startswith("/healthz") else args.connections, args.duration_s - args.warmup_s, *r.csv_cells(),
                        r.cores["client"]] for r in runs])
    results.per_second_csv(out / "http_per_second.csv", {"predict": runs[0].per_second, "echo": runs[1].per_second})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = results.begin("http")
    with Stack(raw / "logs", env=server_env(args)) as stack:
        warm_up(stack.url)
        echo = echo_baseline(raw, args.duration_s, args.connections, args.threads)
        predict, health, depth = measure(args, raw, stack)
    runs = [predict, echo, *health]
    write_tables(out, args, runs)
    plot(out, args, predict, echo, health, depth)
    invalid = sum((run.responses.invalid() for run in runs), Counter())
    per_answer = {name: sum(v for k, v in run.cores.items() if k.startswith(name)) * 1000 / max(run.throughput, 1e-9)
                  for name, run in (("api", predict), ("echo", echo), ("worker", predict))}
    results.write_summary(out, "http: /predict next to bare waitress", info, __doc__, [
        results.setup(args, stack.overrides),
        results.goals("http", ["goal", "this run", "verdict"], [
            [f"/healthz p99 <= {HEALTHZ_GOAL_P99_MS:g} ms while /predict runs, {run.name}",
             f"p99 {results.ms(run.stats['p99'])} ms over {run.stats['count']} probes, max {results.ms(run.stats['max'])} ms",
             results.verdict(run.stats["p99"], HEALTHZ_GOAL_P99_MS)] for run in health[:2]]),
        "## Results\n\n" + results.markdown_table(Run.HEADERS, [run.row() for run in runs]),
        f"- /predict / echo: **{predict.throughput / max(echo.throughput, 1e-9):.2f}x** the throughput; p50 "
        f"{predict.stats['p50'] / echo.stats['p50']:.1f}x, p99 {predict.stats['p99'] / echo.stats['p99']:.1f}x the latency.\n"
        f"- /healthz p99 with the API idle: {results.ms(health[2].stats['p99'])} ms. Fresh minus kept-alive is the cost of accepting "
        "a connection under load; kept-alive minus idle, the wait for the API's GIL and a CPU.\n"
        f"- CPU per answer: API {per_answer['api']:.1f} ms (echo server {per_answer['echo']:.2f} ms), worker "
        f"{per_answer['worker']:.1f} ms.\n- Invalid bodies or transport errors: {dict(invalid) or 'none'}; /predict answered "
        f"from cache: {predict.responses.details().get('cached', 0)}."],
        {"http_latency.png": "p50/p95/p99 per second for /predict and echo; every /healthz probe",
         "http_throughput.png": "responses per second, and the Redis queue length during /predict",
         "http_status.png": "responses per second by status code", "http_summary.csv, http_per_second.csv": "the figures"})
    return 1 if sum(invalid.values()) else 0


def run_echo_only(argv: list[str]) -> int:
    """Scenario `echo`: the bare-waitress baseline alone."""
    args = parse_args(argv, "echo")
    info, out, raw = results.begin("echo")
    echo = echo_baseline(raw, args.duration_s, args.connections, args.threads)
    results.per_second_csv(out / "echo_per_second.csv", {"echo": echo.per_second})
    fig, (l_ax, s_ax) = results.figure(2, f"echo (bare waitress, {args.threads} threads): {args.connections} connections")
    results.plot_percentiles(l_ax, echo.per_second, "echo")
    results.plot_statuses(s_ax, echo.responses, "echo: responses per second by status code", len(echo.per_second))
    results.save(fig, out / "echo.png")
    results.write_summary(out, "echo: bare waitress baseline", info, echo_module.__doc__,
                          [results.setup(args), results.markdown_table(Run.HEADERS, [echo.row()])],
                          {"echo.png": "latency percentiles and statuses per second", "echo_per_second.csv": "the series"})
    print(f"echo: {echo.throughput:.0f}/s, p50 {results.ms(echo.stats['p50'])} p99 {results.ms(echo.stats['p99'])} ms", flush=True)
    return 1 if echo.responses.invalid() else 0


if __name__ == "__main__":
    raise SystemExit(main())
