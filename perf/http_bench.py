"""Scenario `http`: /predict throughput and latency at 64 keep-alive connections, next to the bare
waitress echo baseline measured in the same run, with /healthz probed while the workers are saturated.

Issue 2, "what must hold" items 5 and 6. Three measurements, one after the other, each by its own
client process (`perf.loadgen`):

1. echo: `perf.echo` (a WSGI app returning the posted JSON) on waitress with the API's HTTP_THREADS,
   driven exactly like /predict: same client, connections, duration and bodies (the stack is idle).
2. /predict against the stack (Redis, S3, one Celery worker process with QUEUE_WORKERS pool processes,
   the API): a closed loop, each connection sending its next request when the previous answer came.
3. during 2., /healthz once every `--healthz-interval-ms` from two separate processes: one on a
   fresh connection each time (as a kubelet probe does; the goal applies to it), one on a kept-alive
   connection (the same without the cost of accepting a connection). For comparison, /healthz is
   probed alone for `--idle-probe-s` just before, with the API idle.

Figures cover the window from `--warmup-s` to the end of the run (responses by completion time);
the per-second plots show the whole run. Every non-200 answer and every transport error is counted
and reported; bodies are validated (prediction a finite number, model_version a string).
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from perf import echo as echo_module
from perf.common import (
    PERCENTILES,
    CpuMeter,
    Responses,
    Sampler,
    Stack,
    StackError,
    client_stats,
    figure,
    latency_stats,
    machine_info,
    machine_markdown,
    managed,
    markdown_table,
    ms,
    plot_percentiles,
    plot_statuses,
    probing,
    results_dir,
    run_client,
    save,
    stop_on_sigterm,
    verdict,
    wait_http,
    write_csv,
)
from perf.echo import echo_process

HEALTHZ_GOAL_P99_MS = 20.0


def parse_args(argv: list[str] | None, scenario: str = "http") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m perf --scenario {scenario}", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s runs instead of 20 s")
    parser.add_argument("--duration-s", type=float, default=None, help="length of each run (default 20, --quick 8)")
    parser.add_argument("--warmup-s", type=float, default=None, help="left out of the figures (default 2, --quick 1)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=16, help="HTTP_THREADS of the API and the echo server")
    parser.add_argument("--workers", type=int, default=2, help="QUEUE_WORKERS (pool processes of the worker)")
    parser.add_argument("--healthz-interval-ms", type=float, default=20.0)
    parser.add_argument("--idle-probe-s", type=float, default=3.0, help="/healthz probed alone first, for comparison")
    args = parser.parse_args(argv)
    args.duration_s = args.duration_s or (8.0 if args.quick else 20.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 2.0)
    if args.warmup_s >= args.duration_s:
        parser.error("--warmup-s must be shorter than --duration-s")
    return args


def load_args(args: argparse.Namespace, kind: str, path: str, n_features: int) -> list[str]:
    return ["--kind", kind, "--path", path, "--n-features", str(n_features), "--connections", str(args.connections),
            "--duration-s", str(args.duration_s), "--grace-s", "20"]


def client_timeout(args: argparse.Namespace) -> float:
    return args.duration_s + 20 + 30


class Run:
    """One measured client run: its responses, the window's figures, and who used the CPU."""

    def __init__(self, name: str, responses: Responses, client: dict[str, Any], cores: dict[str, float],
                 args: argparse.Namespace, window: tuple[float, float] | None = None) -> None:
        self.name, self.responses, self.client = name, responses, client
        self.cores = {**cores, "client": round(client.get("cpu_s", 0) / max(client.get("wall_s", 1), 1e-9), 2)}
        start, end = window or (args.warmup_s, args.duration_s)
        done = responses.end_s
        self.window = responses.where((done >= start) & (done < end))
        self.throughput = len(self.window) / (end - start)
        self.stats = latency_stats(self.window.latency_ms)
        # What the callers got: valid 200s (a fast 429 is a response, not an answer).
        answered = self.window.where((self.window.status == 200) & self.window.valid)
        self.goodput = len(answered) / (end - start)
        self.answered_stats = latency_stats(answered.latency_ms)
        self.per_second = responses.per_second(int(np.ceil(end)))

    def row(self) -> list[Any]:
        s = self.stats
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.responses.statuses().items()))
        invalid = sum(self.responses.invalid().values())
        return [self.name, f"{self.throughput:.0f}", ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), ms(s["max"]),
                statuses, invalid, ", ".join(f"{k} {v}" for k, v in self.cores.items())]


def measure_echo(args: argparse.Namespace, raw: Path, n_features: int, flask: bool = False) -> Run:
    name = "flask-echo" if flask else "echo"
    print(f"{name} baseline: {args.connections} connections for {args.duration_s:g} s", flush=True)
    with contextlib.ExitStack() as stack:
        (raw / "logs").mkdir(parents=True, exist_ok=True)
        process, port = echo_process(raw / "logs", args.threads, flask=flask)
        echo = managed(stack, process)
        wait_http(f"http://127.0.0.1:{port}/echo", 30, echo, status=405 if flask else 200)  # Flask: POST only
        meter = CpuMeter({f"{name} server": echo.pid})
        client = run_client("load", port, raw / f"{name}.csv", raw, timeout_s=client_timeout(args),
                            args=load_args(args, "echo", "/echo", n_features))
        cores = meter.cores_used()
    return Run("echo (Flask on waitress)" if flask else "echo (bare waitress)", Responses.read(raw / f"{name}.csv"),
               client, cores, args)


def echo_baseline(raw: Path, n_features: int, seconds: float, connections: int = 64, threads: int = 16,
                  flask: bool = False) -> Run:
    """The echo baseline for another scenario (`flask`: the one-route Flask echo): closed loop over
    `connections`, the first 2 s (at most a quarter) left out."""
    args = argparse.Namespace(connections=connections, duration_s=seconds, threads=threads,
                              warmup_s=min(2.0, seconds / 4))
    return measure_echo(args, raw, n_features, flask)


PROBES = {"healthz": ("/healthz, fresh connection", []), "healthz-keepalive": ("/healthz, keep-alive", ["--keepalive"])}


def probe_args(args: argparse.Namespace, name: str, duration_s: float, *extra: str) -> list[str]:
    return ["--method", "GET", "--path", "/healthz", "--kind", "healthz", "--interval-ms", str(args.healthz_interval_ms),
            "--duration-s", str(duration_s), *extra]


def measure_idle_healthz(args: argparse.Namespace, raw: Path, stack: Stack) -> Run:
    """/healthz with nothing else running against the API: what the machine gives when the API is idle."""
    stats = run_client("probe", stack.port, raw / "healthz-idle.csv", raw, timeout_s=args.idle_probe_s + 30,
                       args=probe_args(args, "healthz-idle", args.idle_probe_s))
    return Run("/healthz, idle API (fresh connection)", Responses.read(raw / "healthz-idle.csv"), stats, {}, args,
               window=(0.0, args.idle_probe_s))


def measure_predict(args: argparse.Namespace, raw: Path, stack: Stack,
                    n_features: int) -> tuple[Run, list[Run], list[tuple[float, float]]]:
    print(f"http: /predict, {args.connections} connections for {args.duration_s:g} s, /healthz every "
          f"{args.healthz_interval_ms:g} ms", flush=True)
    probe = stack.queue_probe()
    roots = {"api": stack.api.pid, **{w.name: w.pid for w in stack.workers},
             "redis": stack.services[0].process.pid}  # type: ignore[union-attr]
    probes = {name: probe_args(args, name, args.duration_s, *extra) for name, (_, extra) in PROBES.items()}
    with probing(stack.port, raw, probes, stack.env) as files, Sampler(probe.depth) as depth:
        meter = CpuMeter(roots)
        client = run_client("load", stack.port, raw / "predict.csv", raw, timeout_s=client_timeout(args),
                            args=load_args(args, "predict", "/predict", n_features))
        cores = meter.cores_used()
    predict = Run("/predict", Responses.read(raw / "predict.csv"), client, cores, args)
    health = []
    for name, (label, _) in PROBES.items():
        # The probes and the queue sampler started a moment before the /predict client: put them on its clock.
        stats = client_stats(raw / f"{name}.client.log", raw / f"{name}.stats.json")
        probed = Responses.read(files[name])
        probed.start_s += stats.get("t0_epoch", 0) - client.get("t0_epoch", 0)
        health.append(Run(label, probed, stats, {}, args))
    shift = depth.t0_epoch - client.get("t0_epoch", 0)
    return predict, health, [(t + shift, d) for t, d in depth.samples]


def warm_up(stack: Stack, n_features: int) -> None:
    """A few calls through the whole path (connections, model, pools) before anything is measured."""
    import requests

    for i in range(20):
        response = requests.post(f"{stack.url}/predict", json={"features": [50.0 + i] * n_features}, timeout=20)
        if response.status_code != 200:
            raise StackError(f"warm-up /predict answered {response.status_code}: {response.text[:300]}")


def plot(out: Path, args: argparse.Namespace, predict: Run, echo: Run, health: list[Run],
         depth: list[tuple[float, float]]) -> list[Path]:
    title = f"http: {args.connections} keep-alive connections, {args.duration_s:g} s each"
    fig, (p_ax, e_ax, h_ax) = figure(3, f"{title}: latency percentiles per second")
    plot_percentiles(p_ax, predict.per_second, "/predict")
    plot_percentiles(e_ax, echo.per_second, "echo")
    for ax, run in ((p_ax, predict), (e_ax, echo)):
        ax.set_title(f"{run.name}", fontsize=10)
        ax.set_yscale("log")
    for run, colour in zip(health, ("tab:blue", "tab:green"), strict=False):
        h_ax.plot(run.responses.end_s, run.responses.latency_ms, ".", markersize=2.5, color=colour, alpha=0.6,
                  label=f"{run.name}: each probe")
        h_ax.plot([r["second"] + 0.5 for r in run.per_second], [r["p99_ms"] for r in run.per_second], "-",
                  color=colour, linewidth=1.2, label=f"{run.name}: p99 per second")
    h_ax.axhline(HEALTHZ_GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {HEALTHZ_GOAL_P99_MS:g} ms")
    h_ax.axvspan(0, args.duration_s, color="tab:orange", alpha=0.08, label="/predict load running")
    h_ax.set_title(f"/healthz while /predict runs at {args.connections} connections", fontsize=10)
    h_ax.set_xlabel("second of the run")
    h_ax.set_ylabel("latency (ms)")
    h_ax.set_yscale("log")
    h_ax.grid(alpha=0.3)
    h_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    paths = [save(fig, out / "http_latency.png")]

    fig, (p_ax, e_ax, q_ax) = figure(3, f"{title}: throughput per second")
    for ax, run in ((p_ax, predict), (e_ax, echo)):
        ax.plot([r["second"] for r in run.per_second], [r["responses"] for r in run.per_second], marker="o",
                markersize=3, label=f"{run.name}: {run.throughput:.0f}/s over the window")
        ax.axvline(args.warmup_s, color="grey", linewidth=0.8, linestyle=":", label="end of warm-up")
        ax.set_title(f"{run.name}: responses per second", fontsize=10)
        ax.set_ylabel("responses / s")
        ax.set_xlabel("second of the run")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    q_ax.plot([t for t, _ in depth], [d for _, d in depth], color="tab:purple")
    q_ax.set_title("interactive queue length (requests waiting in Redis) during the /predict run: "
                   "above 0, the workers are the limit", fontsize=10)
    q_ax.set_xlabel("second of the run")
    q_ax.set_ylabel("requests waiting")
    q_ax.set_ylim(bottom=0)
    q_ax.grid(alpha=0.3)
    paths.append(save(fig, out / "http_throughput.png"))

    fig, (ps_ax, es_ax) = figure(2, f"{title}: status codes per second")
    plot_statuses(ps_ax, predict.per_second, "/predict")
    plot_statuses(es_ax, echo.per_second, "echo")
    paths.append(save(fig, out / "http_status.png"))
    return paths


def write_tables(out: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    write_csv(out / "http_summary.csv",
              ["endpoint", "connections", "window_s", "responses_in_window", "throughput_per_s",
               *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "non_200", "invalid_bodies", "client_cores"],
              [[r.name, 1 if r.name.startswith("/healthz") else args.connections, args.duration_s - args.warmup_s,
                len(r.window), round(r.throughput, 1), *(round(r.stats[f"p{p}"], 3) for p in PERCENTILES),
                round(r.stats["max"], 3), int((r.responses.status != 200).sum()), sum(r.responses.invalid().values()),
                r.cores["client"]] for r in runs])
    predict, echo = runs[0], runs[1]
    header = ["second"] + [f"{run}_{field}" for run in ("predict", "echo")
                           for field in ("responses", "p50_ms", "p95_ms", "p99_ms", "non_200")]
    rows = []
    for p_row, e_row in zip(predict.per_second, echo.per_second, strict=True):
        rows.append([p_row["second"]] + [value for row in (p_row, e_row) for value in (
            row["responses"], row["p50_ms"], row["p95_ms"], row["p99_ms"],
            sum(n for code, n in row["statuses"].items() if code != 200))])
    write_csv(out / "http_per_second.csv", header, rows)


def summary(info: dict[str, Any], args: argparse.Namespace, stack_env: dict[str, str], predict: Run, echo: Run,
            health: list[Run]) -> str:
    ratio_rps = predict.throughput / echo.throughput if echo.throughput else float("nan")
    non_200 = {k: v for k, v in predict.responses.statuses().items() if k != "200"}
    invalid = sum((run.responses.invalid() for run in (predict, echo, *health)), Counter())
    cached = predict.responses.details().get("cached", 0)
    hs, ks = health[0].stats, health[1].stats
    return "\n\n".join([
        f"# http: /predict next to bare waitress ({info['date']})",
        __doc__.split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["connections", f"{args.connections} keep-alive, closed loop"],
            ["duration", f"{args.duration_s:g} s per run, figures over {args.duration_s - args.warmup_s:g} s "
                         f"(first {args.warmup_s:g} s left out)"],
            ["HTTP_THREADS", args.threads], ["worker", f"1 Celery worker process, QUEUE_WORKERS={args.workers}"],
            ["QUEUE_MAXSIZE", stack_env.get("QUEUE_MAXSIZE", "512 (default)")],
            ["body", "`{\"features\": [9 numbers]}`, 1,024 distinct rows in turn"],
            ["/healthz probes", f"every {args.healthz_interval_ms:g} ms each, one on a fresh connection each time "
                                "(like a kubelet probe), one on a kept-alive connection; and "
                                f"{args.idle_probe_s:g} s of fresh-connection probes with the API idle, just before"]]),
        "## Results\n\n" + markdown_table(
            ["endpoint", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses (whole run)",
             "invalid bodies", "cores used"], [predict.row(), echo.row(), *(run.row() for run in health)]),
        f"- /predict / echo: **{ratio_rps:.2f}x** the throughput; p50 {predict.stats['p50'] / echo.stats['p50']:.1f}x, "
        f"p99 {predict.stats['p99'] / echo.stats['p99']:.1f}x the latency.\n"
        f"- /healthz while /predict ran, fresh connection: p99 {ms(hs['p99'])} ms over {hs['count']} probes, max "
        f"{ms(hs['max'])} ms (goal p99 <= {HEALTHZ_GOAL_P99_MS:g} ms: {verdict(hs['p99'], HEALTHZ_GOAL_P99_MS)}); "
        f"kept-alive connection: p99 {ms(ks['p99'])} ms, max {ms(ks['max'])} ms "
        f"({verdict(ks['p99'], HEALTHZ_GOAL_P99_MS)}); with the API idle just before: p99 {ms(health[2].stats['p99'])} "
        "ms. Fresh minus kept-alive is the cost of accepting a connection under load; kept-alive minus idle is the "
        "wait for the API process's GIL and for a CPU while /predict runs.\n"
        f"- API CPU per /predict answer: {predict.cores.get('api', 0) * 1000 / max(predict.throughput, 1e-9):.1f} ms "
        f"(echo server: {echo.cores.get('echo server', 0) * 1000 / max(echo.throughput, 1e-9):.2f} ms); worker CPU per "
        f"/predict answer: {sum(v for k, v in predict.cores.items() if k.startswith('worker')) * 1000 / max(predict.throughput, 1e-9):.1f} ms.\n"
        f"- /predict answers other than 200: {non_200 or 'none'}; invalid bodies or transport errors: "
        f"{dict(invalid) or 'none'}; answered from cache: {cached}.",
        "`cores used` is CPU time over wall time during the run (1.0 = one core busy): on a 2-core machine shared "
        "with other work it shows where the time went, and that the client was not the bottleneck. Latency is "
        "measured by the client from sending the request to the last byte of the answer.",
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `http_latency.png`: p50/p95/p99 per second for /predict and echo; every /healthz probe\n"
        "- `http_throughput.png`: responses per second, and the Redis queue length during /predict\n"
        "- `http_status.png`: responses per second by status code\n"
        "- `http_summary.csv`, `http_per_second.csv`: the figures\n"
        "- `raw/`: every response (`predict.csv`, `echo.csv`, `healthz*.csv`), client stats, process logs",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    info = machine_info()
    out = results_dir("http")
    raw = out / "raw"
    print(f"http: results in {out}", flush=True)
    env = {"QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads)}
    with Stack(raw / "logs", worker_processes=1, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        warm_up(stack, n_features)
        echo = measure_echo(args, raw, n_features)
        idle = measure_idle_healthz(args, raw, stack)
        predict, health, depth = measure_predict(args, raw, stack, n_features)
        health.append(idle)
        stack_env = dict(stack.env)
    write_tables(out, args, [predict, echo, *health])
    plot(out, args, predict, echo, health, depth)
    (out / "summary.md").write_text(summary(info, args, stack_env, predict, echo, health))
    for run in (predict, echo, *health):
        s = run.stats
        print(f"http [{run.name}]: {run.throughput:.0f}/s, p50 {ms(s['p50'])} p95 {ms(s['p95'])} p99 {ms(s['p99'])} "
              f"max {ms(s['max'])} ms; statuses {dict(run.responses.statuses())}; cores {run.cores}", flush=True)
    p99 = health[0].stats["p99"]
    print(f"http: /predict/echo throughput {predict.throughput / max(echo.throughput, 1e-9):.2f}; /healthz p99 "
          f"{ms(p99)} ms (goal <= {HEALTHZ_GOAL_P99_MS:g}: {verdict(p99, HEALTHZ_GOAL_P99_MS).strip('*')}); "
          f"summary in {out / 'summary.md'}", flush=True)
    broken = sum(run.responses.invalid().total() for run in (predict, echo, *health))
    return 1 if broken else 0


def run_echo_only(argv: list[str]) -> int:
    """Scenario `echo`: the bare-waitress baseline alone."""
    stop_on_sigterm()
    args = parse_args(argv, "echo")
    info = machine_info()
    out = results_dir("echo")
    echo = measure_echo(args, out / "raw", 9)
    write_csv(out / "echo_per_second.csv", ["second", "responses", "p50_ms", "p95_ms", "p99_ms"],
              [[r["second"], r["responses"], r["p50_ms"], r["p95_ms"], r["p99_ms"]] for r in echo.per_second])
    fig, (l_ax, s_ax) = figure(2, f"echo (bare waitress, {args.threads} threads): {args.connections} connections")
    plot_percentiles(l_ax, echo.per_second, "echo")
    plot_statuses(s_ax, echo.per_second, "echo")
    save(fig, out / "echo.png")
    (out / "summary.md").write_text("\n\n".join([
        f"# echo: bare waitress baseline ({info['date']})", (echo_module.__doc__ or "").split("\n\n", 1)[1].strip(),
        markdown_table(["endpoint", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses", "invalid bodies",
                        "cores used"], [echo.row()]),
        "## Machine\n\n" + machine_markdown(info)]) + "\n")
    print(f"echo: {echo.throughput:.0f}/s, p50 {ms(echo.stats['p50'])} p99 {ms(echo.stats['p99'])} ms; "
          f"summary in {out / 'summary.md'}", flush=True)
    return 1 if echo.responses.invalid() else 0


if __name__ == "__main__":
    raise SystemExit(main())
