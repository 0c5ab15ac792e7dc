"""Locust for `original`, `isolated` and `overload --client locust`, headless against a stack with the queue sampled
meanwhile (how: perf/README.md); `LoadRun` holds one such run, or an open-loop run of `overload`."""

from __future__ import annotations

import argparse
import contextlib
import csv
import resource
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from devtools.processes import PYTHON, ROOT, ManagedProcess
from perf import results
from perf.checks import ACCEPTED
from perf.measure import CpuMeter, Responses, Sampler, latency_stats, scrape_metrics
from perf.runs import Run, by_quick, echo_baseline, echo_server, scenario_parser, server_env, warm_up
from perf.stack import Stack, StackError, child_env, wait_child

QUEUE_INTERVAL_S = 0.25
REDIS_DEPTH = "Redis: interactive queue length"


def queue_gauges(url: str) -> dict[str, float]:
    return {key: value for key, value in scrape_metrics(f"{url}/metrics").items()
            if key.startswith(("inference_queue_depth{", "inference_backlog"))}


class QueueWatch(contextlib.ExitStack):
    """The API's queue gauges and the interactive queue's length from Redis, sampled while a run goes on."""

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.api = Sampler(lambda: queue_gauges(stack.url), QUEUE_INTERVAL_S)
        self.redis = Sampler(stack.queue_probe().depth, QUEUE_INTERVAL_S)

    def __enter__(self) -> QueueWatch:
        super().__enter__()
        self.enter_context(self.api)
        self.enter_context(self.redis)
        return self

    def status(self) -> str:
        return f"(interactive queue {self.redis.samples[-1][1] if self.redis.samples else '?'})"

    def on_clock(self, t0_epoch: float) -> list[tuple[float, dict[str, float]]]:
        """Every sample as (seconds since `t0_epoch`, {series: value}); samples before it are left out."""
        series = [(t + self.api.t0_epoch - t0_epoch, dict(values)) for t, values in self.api.samples]
        series += [(t + self.redis.t0_epoch - t0_epoch, {REDIS_DEPTH: float(depth)}) for t, depth in self.redis.samples]
        return sorted((sample for sample in series if sample[0] >= 0), key=lambda sample: sample[0])


@dataclass
class LoadRun:
    """One load run: every response per endpoint (seconds from the first request), and what ran beside it."""

    name: str  # file prefix in the results folder
    title: str
    client: str
    duration_s: float
    endpoints: dict[str, Responses]
    cores: dict[str, float]
    queue: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    users: list[tuple[float, float]] = field(default_factory=list)  # Locust's user count over time
    offered_per_s: float | None = None  # an open-loop run's offered rate
    locust_stats: list[dict[str, str]] = field(default_factory=list)
    locust_failures: list[dict[str, str]] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)  # stack processes that died during the run

    @property
    def seconds(self) -> int:
        return int(np.ceil(max([self.duration_s, *(float(r.end_s.max()) for r in self.endpoints.values() if len(r))])))

    def per_second(self, name: str) -> list[dict[str, Any]]:
        return self.endpoints[name].per_second(self.seconds)

    def stats(self, name: str) -> dict[str, float]:
        return latency_stats(self.endpoints[name].latency_ms)

    def throughput(self, name: str) -> float:
        """Answers (transport errors left out) per second, over the run or until the last answer if later."""
        answered = self.endpoints[name].where(self.endpoints[name].status != 0)
        return len(answered) / max([self.duration_s, *([float(answered.end_s.max())] if len(answered) else [])])

    def outstanding(self) -> list[tuple[float, float]]:
        """Requests sent (or due, open loop) and not yet answered, every QUEUE_INTERVAL_S."""
        starts = np.sort(np.concatenate([r.start_s for r in self.endpoints.values()]))
        ends = np.sort(np.concatenate([r.end_s for r in self.endpoints.values()]))
        times = np.arange(0.0, self.seconds + QUEUE_INTERVAL_S, QUEUE_INTERVAL_S)
        waiting = np.searchsorted(starts, times, side="right") - np.searchsorted(ends, times, side="right")
        return list(zip(times.tolist(), waiting.astype(float).tolist(), strict=True))

    def failures(self, name: str) -> Responses:
        """What Locust counts as a failure: a status not ACCEPTED, or an answer that breaks the contract."""
        responses = self.endpoints[name]
        return responses.where(~responses.valid | ~np.isin(responses.status, ACCEPTED))

    def broken(self) -> int:
        """Broken answers, 500s and transport errors, plus one for each stack process that died."""
        return len(self.exited) + sum(r.broken() + int(np.isin(r.status, (0, 500)).sum()) for r in self.endpoints.values())

    def queue_max(self) -> dict[str, float]:
        keys = {key for _, values in self.queue for key in values}
        return {key: max(values.get(key, 0.0) for _, values in self.queue) for key in keys}


# -- running Locust ----------------------------------------------------------------------------------


def profile_parser(name: str, doc: str | None, run_time_s: float) -> argparse.ArgumentParser:
    """The options `original` and `isolated` share (each adds its own `--users`)."""
    parser = scenario_parser(name, doc, "20 s Locust runs and an 8 s echo baseline", threads=16)
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second")
    parser.add_argument("--run-time-s", type=float, default=None, help=f"each Locust run (default {run_time_s:g}, --quick 20)")
    parser.add_argument("--echo-s", type=float, default=None, help="length of the echo run (default 20, --quick 8)")
    # One API process by default: Locust needs a share of the two cores too.
    parser.add_argument("--processes", type=int, default=1, help="HTTP_PROCESSES: API processes on the port")
    parser.add_argument("--locust-processes", type=int, default=0, help="Locust's --processes (0: one process)")
    parser.set_defaults(default_run_time_s=run_time_s)
    return parser


def profile_args(args: argparse.Namespace) -> argparse.Namespace:
    by_quick(args, run_time_s=(args.default_run_time_s, 20.0), echo_s=(20.0, 8.0))
    args.locust_extra = ["--processes", str(args.locust_processes)] if args.locust_processes else []
    return args


@contextlib.contextmanager
def profile_stack(args: argparse.Namespace, raw: Path) -> Iterator[tuple[Stack, Run]]:
    """The stack of `original` and `isolated` (one worker process), warmed up, and the echo baseline beside it."""
    with Stack(raw / "logs", env=server_env(args)) as stack:
        warm_up(stack.url)
        yield stack, echo_baseline(raw, args.echo_s, threads=args.threads)


def profile_setup(args: argparse.Namespace, run: LoadRun, users: str, echo: Run) -> str:
    return "## Set-up\n\n" + results.markdown_table(["setting", "value"], [
        ["Locust", f"{run.client}: {users} users, spawn rate {args.spawn_rate:g}/s, {args.run_time_s:g} s, "
                   f"{args.locust_processes or 1} process(es)"],
        ["worker", f"1 Celery worker process, QUEUE_WORKERS={args.workers}"],
        ["API", f"HTTP_PROCESSES={args.processes}, HTTP_THREADS={args.threads}, other settings at their defaults"],
        ["echo baseline", f"perf.loadgen closed loop, 64 connections, {args.echo_s:g} s: {echo.throughput:.0f}/s, "
                          f"p50 {results.ms(echo.stats['p50'])} ms, p99 {results.ms(echo.stats['p99'])} ms"]])


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def locust(name: str, user_class: str, host: str, raw: Path, env: Mapping[str, str], *, users: int, spawn_rate: float,
           run_time_s: float, extra: Sequence[str] = (),
           status: Callable[[], str] = lambda: "") -> tuple[dict[str, Responses], float, float]:
    """Locust headless, `user_class` against `host`, to completion: every response per endpoint (on a clock from
    the first request), that first request's time (epoch) and Locust's CPU over the run in cores."""
    print(f"{name}: Locust {user_class}, {users} users (spawn {spawn_rate:g}/s) for {run_time_s:g} s", flush=True)
    for stale in raw.glob(f"{name}-responses-*.csv"):
        stale.unlink()
    command = [str(Path(PYTHON).parent / "locust"), "-f", str(ROOT / "perf" / "locustfile.py"), user_class, "--headless",
               "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{run_time_s:g}s", "--host", host, "--only-summary",
               "--loglevel", "WARNING", "--exit-code-on-error", "0", "--perf-responses", str(raw / f"{name}-responses"),
               *extra]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The locustfile imports perf.checks: the project's root on the path, as the compose service has it.
    with ManagedProcess(f"{name}.locust", command, {**env, "PYTHONPATH": str(ROOT)}, raw) as process:
        wait_child(process, f"locust {name}", run_time_s + 60, status)
    if process.process is None or process.process.returncode != 0:
        raise StackError(f"locust failed: see {process.log_path}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores = round((after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / max(np.ceil(run_time_s), 1e-9), 2)
    rows = sorted((row for path in raw.glob(f"{name}-responses-*.csv") for row in read_csv(path)),
                  key=lambda row: float(row["start_s"]))
    if not rows:
        raise StackError("Locust recorded no response")
    t0, grouped = float(rows[0]["start_s"]), defaultdict(list)
    for row in rows:
        grouped[row["name"]].append(row)
    order = sorted(grouped, key=lambda endpoint: (endpoint != "/predict", endpoint))
    return {endpoint: Responses.from_rows(grouped[endpoint], t0) for endpoint in order}, t0, cores


def run_locust(stack: Stack, out: Path, name: str, title: str, user_class: str, *, users: int, spawn_rate: float,
               run_time_s: float, extra: Sequence[str] = ()) -> LoadRun:
    """Locust against the stack for `run_time_s`, its CSVs in `out`, with the queue and the stack's CPU beside it."""
    with QueueWatch(stack) as watch:
        meter = CpuMeter(stack.roots())
        endpoints, t0, locust_cores = locust(name, user_class, stack.url, out / "raw", stack.env, users=users,
                                             spawn_rate=spawn_rate, run_time_s=run_time_s,
                                             extra=["--csv", str(out / f"{name}_locust"), "--csv-full-history", *extra],
                                             status=watch.status)
        cores = {**meter.cores_used(), "client (Locust)": locust_cores}
    history = read_csv(out / f"{name}_locust_stats_history.csv")
    users_over_time = [(max(0.0, float(row["Timestamp"]) - t0), float(row["User Count"])) for row in history
                       if row.get("Name") == "Aggregated"]
    return LoadRun(name, title, f"Locust {version('locust')} ({user_class}, FastHttpUser)", run_time_s, endpoints, cores,
                   watch.on_clock(t0), users_over_time, None, read_csv(out / f"{name}_locust_stats.csv"),
                   read_csv(out / f"{name}_locust_failures.csv"), stack.exited())


def flask_echo_reference(out: Path, *, users: int, spawn_rate: float, run_time_s: float, threads: int) -> Responses:
    """`FlaskEchoUser` (the original profile's pacing) against the one-route Flask echo on waitress: what a Flask
    app doing nothing gets from the same Locust profile on this machine."""
    raw = out / "raw"
    with echo_server(raw, "flask-echo-reference", threads, flask=True) as (port, _):
        endpoints, _, _ = locust("flask-echo", "FlaskEchoUser", f"http://127.0.0.1:{port}", raw, child_env({}),
                                 users=users, spawn_rate=spawn_rate, run_time_s=run_time_s)
    return endpoints["/echo"]


# -- the report of a LoadRun --------------------------------------------------------------------

ENDPOINT_HEADERS = ["endpoint", "responses", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses",
                    "failures (by status)", "invalid bodies", "Locust's own p50 / p95 / p99 ms; failures"]


def echo_ratio_text(run: LoadRun, echo: Run, name: str = "/predict") -> str:
    s, e, rate = run.stats(name), echo.stats, run.throughput(name)
    return (f"{name}: {rate:.0f} responses/s = **{rate / max(echo.throughput, 1e-9):.2f}x** the echo baseline "
            f"({echo.throughput:.0f}/s); p50 {s['p50'] / e['p50']:.1f}x, p99 {s['p99'] / e['p99']:.1f}x the echo's latency")


def run_section(run: LoadRun) -> str:
    """A run's table by endpoint, its failures by message, who used the CPU and how deep the queue got."""
    own = {row["Name"]: row for row in run.locust_stats}
    rows = []
    for name, responses in run.endpoints.items():
        s, theirs = run.stats(name), own.get(name)
        rows.append([name, len(responses), f"{run.throughput(name):.0f}", *(results.ms(s[k]) for k in ("p50", "p95", "p99", "max")),
                     results.counts(responses.statuses()), results.counts(run.failures(name).statuses()), responses.broken(),
                     f"{theirs['50%']} / {theirs['95%']} / {theirs['99%']}; {theirs['Failure Count']} failures"
                     if theirs else "n/a"])
    failures: list[list[Any]] = ([[row["Name"], row["Error"][:160], row["Occurrences"]] for row in run.locust_failures]
                or [[name, detail[:160], n] for name in run.endpoints for detail, n in run.failures(name).details().most_common()])
    samples = sum(1 for _, values in run.queue if REDIS_DEPTH not in values)
    return "\n\n".join([
        f"### {run.title}",
        *(f"**{line}** (during or just after this run)" for line in run.exited),
        results.markdown_table(ENDPOINT_HEADERS, rows),
        "Failures by message:\n\n" + results.markdown_table(["endpoint", "message", "occurrences"], failures) if failures
        else "No failures (every answer a 200, or a 429/503 with the contract's body and Retry-After).",
        f"- client: {run.client}; cores used during the run: {results.cores_text(run.cores)}.\n"
        "- deepest queue: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(run.queue_max().items())) or "no sample")
        + f" ({samples} samples of the API's /metrics in {run.seconds} s); most requests awaiting an answer at once "
          f"(the client's count): {max((n for _, n in run.outstanding()), default=0):.0f}."])


def write_run(out: Path, run: LoadRun, goals_ms: Mapping[str, float] | None = None,
              latency: Mapping[str, Responses] | None = None) -> dict[str, str]:
    """A run's figures (<name>_endpoints.csv), series (_per_second.csv, _queue.csv) and plots (`plot_run`) in `out`;
    what each file holds, for the summary."""
    results.write_csv(out / f"{run.name}_endpoints.csv",
                      ["endpoint", "responses", "throughput_per_s", *results.STAT_COLUMNS, "failures", "invalid_bodies", "statuses"],
                      [[name, len(r), round(run.throughput(name), 1), *results.stat_cells(run.stats(name)), len(run.failures(name)), r.broken(),
                        results.counts(r.statuses())] for name, r in run.endpoints.items()])
    results.per_second_csv(out / f"{run.name}_per_second.csv", {name: run.per_second(name) for name in run.endpoints}, "endpoint")
    results.write_csv(out / f"{run.name}_queue.csv", ["t_s", "series", "value"],
                      [[round(t, 3), key, value] for t, values in run.queue for key, value in values.items()])
    plot_run(out, run, goals_ms, latency)
    files = {f"{run.name}_{kind}.png": what for kind, what in (
        ("latency", "latency percentiles per second"), ("throughput", "answers per second and the queue"),
        ("status", "status codes per second"))}
    files[f"{run.name}_endpoints.csv, {run.name}_per_second.csv, {run.name}_queue.csv"] = "the figures and series"
    if run.locust_stats:
        files[f"{run.name}_locust_stats.csv, _stats_history.csv, _failures.csv, _exceptions.csv"] = "Locust's own CSVs"
    return files


def plot_run(out: Path, run: LoadRun, goals_ms: Mapping[str, float] | None = None,
             latency: Mapping[str, Responses] | None = None) -> list[Path]:
    """<name>_latency.png (per endpoint, or per group of `latency`), <name>_throughput.png (with the queue)
    and <name>_status.png."""
    groups = latency or run.endpoints
    fig, axes = results.figure(len(groups), f"{run.title}: latency percentiles per second")
    for ax, (name, responses) in zip(axes, groups.items(), strict=True):
        results.plot_percentiles(ax, responses.per_second(run.seconds), name, (goals_ms or {}).get(name),
                                 f"{name}: percentiles of the answers completed in each second ({run.client})")
    paths = [results.save(fig, out / f"{run.name}_latency.png")]

    fig, (t_ax, q_ax) = results.figure(2, f"{run.title}: throughput and queue over time")
    for name in run.endpoints:
        per = run.per_second(name)
        t_ax.plot([r["second"] for r in per], [r["responses"] - r["statuses"].get(0, 0) for r in per], marker="o",
                  markersize=2.5, label=f"{name}: {run.throughput(name):.0f} answers/s over the run")
        if len(run.endpoints[name].statuses()) > 1:
            t_ax.plot([r["second"] for r in per], [r["statuses"].get(200, 0) for r in per], linestyle="--", linewidth=1,
                      label=f"{name}: of which 200")
    if run.offered_per_s:
        t_ax.axhline(run.offered_per_s, color="grey", linestyle=":", label=f"offered {run.offered_per_s:.0f} req/s")
    results.style(t_ax, "answers per second by endpoint (by completion time; transport errors left out)",
                  ylabel="responses / s", legend=None, bottom=0)
    handles, labels = t_ax.get_legend_handles_labels()
    if run.users:
        u_ax = t_ax.twinx()
        handles += u_ax.step([t for t, _ in run.users], [u for _, u in run.users], where="post", color="grey", alpha=0.6)
        labels.append("Locust users (right axis)")
        u_ax.set_ylabel("users")
        u_ax.set_ylim(bottom=0)
    t_ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    plot_queue(q_ax, run.queue, run.outstanding())
    paths.append(results.save(fig, out / f"{run.name}_throughput.png"))

    fig, axes = results.figure(len(run.endpoints), f"{run.title}: status codes per second")
    for ax, name in zip(axes, run.endpoints, strict=True):
        results.plot_statuses(ax, run.endpoints[name], f"{name}: responses per second by status code", run.seconds)
        if clip_outlier(ax, [row["responses"] for row in run.per_second(name)]):
            ax.legend(fontsize=8, loc="upper left")  # the clipped total is written at the top right
    paths.append(results.save(fig, out / f"{run.name}_status.png"))
    return paths


def clip_outlier(ax: Any, totals: Sequence[float]) -> bool:
    """When one second dwarfs the others (requests failed together at the end of a grace period), cut the y axis
    above the others and write the clipped totals on their bars."""
    ordered = sorted(totals)
    if len(ordered) < 5 or ordered[-1] <= 3 * max(ordered[-2], 1):
        return False
    top = 1.3 * max(ordered[-2], 1)
    ax.set_ylim(0, top)
    for second, total in enumerate(totals):
        if total > top:
            ax.annotate(f"{total:.0f} (clipped)", (second, top), xytext=(-4, -4), textcoords="offset points",
                        ha="right", va="top", fontsize=8)
    return True


def plot_queue(ax: Any, queue: Sequence[tuple[float, Mapping[str, float]]], outstanding: Sequence[tuple[float, float]]) -> None:
    """The queue gauges (left axis) and, on the right axis, the requests the client was waiting for."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, values in queue:
        for key, value in values.items():
            series[key].append((t, value))
    for key, points in sorted(series.items(), key=lambda item: item[0] == REDIS_DEPTH):
        ax.plot([t for t, _ in points], [v for _, v in points], marker=".", markersize=2, linewidth=1,
                linestyle=":" if key == REDIS_DEPTH else "-", label=key if key == REDIS_DEPTH else f"API /metrics: {key}")
    results.style(ax, f"queue depth, sampled every {QUEUE_INTERVAL_S * 1000:.0f} ms (a gap: the API did not answer /metrics in "
                  "time)", ylabel="requests in the Redis queue", legend=None, bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    o_ax = ax.twinx()
    label = "requests awaiting an answer (the client's count: sent, or due if open loop; right axis)"
    handles += o_ax.plot([t for t, _ in outstanding], [n for _, n in outstanding], color="black", linewidth=1.2,
                         alpha=0.7, label=label)
    labels.append(label)
    o_ax.set_ylabel("requests outstanding")
    o_ax.set_ylim(bottom=0)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
