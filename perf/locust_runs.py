"""What the Locust scenarios (`original`, `isolated`, `overload`) share: Locust run headless against a
`Stack`, the API's queue sampled while load runs, and the per-second figures, tables and plots of a run.

`run_locust(...)` starts `locust -f perf/locustfile.py <UserClass> --headless -u N -r R -t T --csv ...
--csv-full-history --only-summary` as a child process. Locust's own CSVs (stats, failures, exceptions,
per-second history) are written straight to the results folder; `--perf-responses` has the locustfile
write every response to raw/, read back here per endpoint as `Responses` (Locust's CSVs have neither
status codes over time nor exact percentiles: it rounds response times above 100 ms to two significant
digits). Locust's CPU is its own and its children's rusage once it has exited, over the run's wall time.

`QueueWatch` samples, every QUEUE_INTERVAL_S, the API's /metrics (`inference_queue_depth` per lane and
`inference_backlog`) and the interactive queue's length read from Redis directly: the API serves /metrics
from the same request threads as /predict, so under overload its samples arrive late or not at all,
while Redis still answers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import resource
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devtools.processes import PYTHON, ROOT
from perf.common import (
    PERCENTILES,
    CpuMeter,
    Responses,
    Sampler,
    Stack,
    StackError,
    child,
    child_env,
    figure,
    latency_stats,
    managed,
    markdown_table,
    ms,
    plot_percentiles,
    plot_statuses,
    save,
    scrape_metrics,
    wait_child,
    wait_http,
    write_csv,
)
from perf.echo import echo_process
from perf.http_bench import Run, echo_baseline, warm_up

LOCUST = str(Path(PYTHON).parent / "locust")
LOCUSTFILE = ROOT / "perf" / "locustfile.py"
QUEUE_INTERVAL_S = 0.25
QUEUE_GAUGES = ("inference_queue_depth{", "inference_backlog")
REDIS_DEPTH = "Redis: interactive queue length"
#: Statuses the Locust profiles count as successes when the body is right: 429/503 are load shedding.
ACCEPTED = (200, 429, 503)


def queue_gauges(url: str) -> dict[str, float]:
    return {key: value for key, value in scrape_metrics(f"{url}/metrics", timeout_s=2.0).items()
            if key.startswith(QUEUE_GAUGES)}


class QueueWatch:
    """The API's queue gauges from /metrics and the interactive queue's length from Redis, sampled in the
    background while a run goes on."""

    def __init__(self, stack: Stack) -> None:
        url = stack.url
        self.api = Sampler(lambda: queue_gauges(url), QUEUE_INTERVAL_S)
        self.redis = Sampler(stack.queue_probe().depth, QUEUE_INTERVAL_S)

    def __enter__(self) -> QueueWatch:
        self.api.__enter__()
        self.redis.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.api.__exit__()
        self.redis.__exit__()

    def status(self) -> str:
        depth = self.redis.samples[-1][1] if self.redis.samples else "?"
        return f"(interactive queue {depth})"

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
        ends = [float(r.end_s.max()) for r in self.endpoints.values() if len(r)]
        return int(np.ceil(max([self.duration_s, *ends])))

    def per_second(self, name: str) -> list[dict[str, Any]]:
        return self.endpoints[name].per_second(self.seconds)

    def stats(self, name: str) -> dict[str, float]:
        return latency_stats(self.endpoints[name].latency_ms)

    def throughput(self, name: str) -> float:
        """Answers (transport errors left out) per second, over the run or until the last answer if later."""
        responses = self.endpoints[name]
        answered = responses.where(responses.status != 0)
        return len(answered) / max([self.duration_s, *([float(answered.end_s.max())] if len(answered) else [])])

    def outstanding(self, step_s: float = QUEUE_INTERVAL_S) -> list[tuple[float, float]]:
        """Requests sent and not yet answered, every `step_s`: at the API (waiting for a thread, or running) or,
        with an open-loop client, due and waiting for a free connection."""
        starts = np.sort(np.concatenate([r.start_s for r in self.endpoints.values()]))
        ends = np.sort(np.concatenate([r.end_s for r in self.endpoints.values()]))
        times = np.arange(0.0, self.seconds + step_s, step_s)
        counts = np.searchsorted(starts, times, side="right") - np.searchsorted(ends, times, side="right")
        return list(zip(times.tolist(), counts.astype(float).tolist(), strict=True))

    def failures(self, name: str) -> Responses:
        """What the Locust profiles count as failures: a status other than ACCEPTED, or an answer that breaks the
        contract (so a well-formed 504 fails, a well-formed 429 does not)."""
        responses = self.endpoints[name]
        return responses.where(~responses.valid | ~np.isin(responses.status, ACCEPTED))

    def invalid_bodies(self, name: str) -> int:
        responses = self.endpoints[name]
        return int((~responses.valid & (responses.status != 0)).sum())

    def broken(self) -> int:
        """Answers that break the contract (an invalid body for their status, a 500, a transport error), plus one for
        each stack process that died."""
        return len(self.exited) + sum(self.invalid_bodies(name) + int(np.isin(r.status, (0, 500)).sum())
                                      for name, r in self.endpoints.items())

    def queue_max(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for _, values in self.queue:
            for key, value in values.items():
                found[key] = max(found.get(key, 0.0), value)
        return found


# -- running Locust ----------------------------------------------------------------------------------


def add_profile_options(parser: argparse.ArgumentParser, run_time_s: float) -> None:
    """The options `original` and `isolated` share (each adds its own `--users`)."""
    parser.add_argument("--quick", action="store_true", help="20 s Locust runs and an 8 s echo baseline")
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second")
    parser.add_argument("--run-time-s", type=float, default=None,
                        help=f"length of each Locust run (default {run_time_s:g}, --quick 20)")
    parser.add_argument("--echo-s", type=float, default=None, help="length of the echo run (default 20, --quick 8)")
    parser.add_argument("--workers", type=int, default=2, help="QUEUE_WORKERS (pool processes of the worker)")
    parser.add_argument("--threads", type=int, default=16, help="HTTP_THREADS of each API process")
    # One process by default here: Locust needs a share of the two cores too, and with 2 x 32 the original
    # profile's /healthz p99 went from 46 to 211 ms for /predict p95 749 -> 645 ms (one run each).
    parser.add_argument("--processes", type=int, default=1, help="HTTP_PROCESSES: API processes on the port")
    parser.add_argument("--locust-processes", type=int, default=0, help="Locust's --processes (0: one process)")
    parser.set_defaults(default_run_time_s=run_time_s)


def profile_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.run_time_s = args.run_time_s or (20.0 if args.quick else args.default_run_time_s)
    args.echo_s = args.echo_s or (8.0 if args.quick else 20.0)
    args.locust_extra = ["--processes", str(args.locust_processes)] if args.locust_processes else []
    return args


@contextlib.contextmanager
def profile_stack(args: argparse.Namespace, raw: Path) -> Iterator[tuple[Stack, Run]]:
    """The stack of `original` and `isolated` (one worker process, QUEUE_WORKERS=--workers, HTTP_PROCESSES=--processes,
    HTTP_THREADS=--threads),
    warmed up, and the echo baseline measured next to it."""
    env = {"QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads), "HTTP_PROCESSES": str(args.processes)}
    with Stack(raw / "logs", worker_processes=1, env=env) as stack:
        n_features = int(stack.model()["n_features"])
        warm_up(stack, n_features)
        yield stack, echo_baseline(raw, n_features, args.echo_s, threads=args.threads)


def profile_setup(args: argparse.Namespace, run: LoadRun, users: str, echo: Run) -> str:
    return "## Set-up\n\n" + markdown_table(["setting", "value"], [
        ["Locust", f"{run.client}: {users} users, spawn rate {args.spawn_rate:g}/s, {args.run_time_s:g} s, "
                   f"{args.locust_processes or 1} process(es)"],
        ["worker", f"1 Celery worker process, QUEUE_WORKERS={args.workers}"],
        ["API", f"HTTP_PROCESSES={args.processes}, HTTP_THREADS={args.threads}, other settings at their defaults"],
        ["echo baseline", f"perf.loadgen closed loop, 64 connections, {args.echo_s:g} s: {echo.throughput:.0f}/s, "
                          f"p50 {ms(echo.stats['p50'])} ms, p99 {ms(echo.stats['p99'])} ms"]])



def stack_roots(stack: Stack) -> dict[str, int]:
    return {"api": stack.api.pid, **{w.name: w.pid for w in stack.workers},
            "redis": stack.services[0].process.pid}  # type: ignore[union-attr]


def exited(stack: Stack) -> list[str]:
    """The API and worker processes no longer running, each with the last line of its log."""
    found = []
    for process in (stack.api, *stack.workers):
        if not process.alive():
            lines = [line for line in process.output().splitlines() if line.strip()]
            code = process.process.returncode if process.process is not None else "?"
            found.append(f"{process.name} exited ({code}): {lines[-1][:300] if lines else 'no output'}")
    return found


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def locust_args(name: str, user_class: str, host: str, raw: Path, *, users: int, spawn_rate: float,
                run_time_s: float) -> list[str]:
    """A headless Locust run of `user_class` against `host`, every response recorded in
    raw/<name>-responses-<pid>.csv; announced on stdout."""
    print(f"{name}: Locust {user_class}, {users} users (spawn {spawn_rate:g}/s) for {run_time_s:g} s", flush=True)
    return [LOCUST, "-f", str(LOCUSTFILE), user_class, "--headless", "-u", str(users), "-r", f"{spawn_rate:g}",
            "-t", f"{run_time_s:g}s", "--host", host, "--only-summary", "--loglevel", "WARNING",
            "--exit-code-on-error", "0", "--perf-responses", str(raw / f"{name}-responses")]


def run_locust(stack: Stack, out: Path, name: str, title: str, user_class: str, *, users: int, spawn_rate: float,
               run_time_s: float, extra: Sequence[str] = ()) -> LoadRun:
    """`locust ... <user_class> --headless` against the stack for `run_time_s`; its CSVs in `out`, every
    response in out/raw/<name>-responses-<pid>.csv."""
    raw = out / "raw"
    for stale in raw.glob(f"{name}-responses-*.csv"):
        stale.unlink()
    args = [*locust_args(name, user_class, stack.url, raw, users=users, spawn_rate=spawn_rate, run_time_s=run_time_s),
            "--csv", str(out / f"{name}_locust"), "--csv-full-history", *extra]
    cpu_before = children_cpu_s()
    with QueueWatch(stack) as watch, child(args, raw / f"{name}.locust.log", stack.env) as process:
        meter = CpuMeter(stack_roots(stack))
        wait_child(process, f"locust {name}", run_time_s + 60, status=watch.status)
        cores = meter.cores_used()
        wall_s = max(float(np.ceil(run_time_s)), 1e-9)
    if process.returncode != 0:
        raise StackError(f"locust exited {process.returncode}: see {raw / (name + '.locust.log')}")
    cores["client (Locust)"] = round((children_cpu_s() - cpu_before) / wall_s, 2)
    endpoints, t0 = read_responses(sorted(raw.glob(f"{name}-responses-*.csv")))
    history = read_csv(out / f"{name}_locust_stats_history.csv")
    users_over_time = [(max(0.0, float(row["Timestamp"]) - t0), float(row["User Count"])) for row in history
                       if row.get("Name") == "Aggregated"]
    return LoadRun(name, title, f"Locust {locust_version()} ({user_class}, FastHttpUser)", run_time_s, endpoints,
                   cores, watch.on_clock(t0), users_over_time, None, read_csv(out / f"{name}_locust_stats.csv"),
                   read_csv(out / f"{name}_locust_failures.csv"), exited(stack))


def run_flask_echo_reference(out: Path, *, users: int, spawn_rate: float, run_time_s: float, threads: int) -> Responses:
    """`FlaskEchoUser` (the original profile's pacing) against the one-route Flask echo on waitress with
    `threads` threads, for `run_time_s`: what a Flask app doing nothing gets from the same Locust profile on
    this machine. Every response in out/raw/flask-echo-responses-<pid>.csv."""
    raw = out / "raw"
    for stale in raw.glob("flask-echo-responses-*.csv"):
        stale.unlink()
    with contextlib.ExitStack() as stack:
        process, port = echo_process(raw / "logs", threads, flask=True)
        server = managed(stack, process)
        wait_http(f"http://127.0.0.1:{port}/echo", 30, server, status=405)  # POST only
        args = locust_args("flask-echo", "FlaskEchoUser", f"http://127.0.0.1:{port}", raw, users=users,
                           spawn_rate=spawn_rate, run_time_s=run_time_s)
        with child(args, raw / "flask-echo.locust.log", child_env({})) as locust:
            wait_child(locust, "locust flask-echo", run_time_s + 60)
    endpoints, _ = read_responses(sorted(raw.glob("flask-echo-responses-*.csv")))
    return endpoints["/echo"]


def locust_version() -> str:
    from importlib.metadata import version

    return version("locust")


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_responses(paths: Iterable[Path]) -> tuple[dict[str, Responses], float]:
    """The recorder's rows per endpoint name, on a clock that starts at the first request; and that start (epoch)."""
    rows = [row for path in paths for row in read_csv(path)]
    if not rows:
        raise StackError("Locust recorded no response")
    rows.sort(key=lambda row: float(row["start_s"]))
    t0 = float(rows[0]["start_s"])
    grouped: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        grouped[row["name"]].append(row)
    order = sorted(grouped, key=lambda name: (name != "/predict", name))
    return {name: Responses(np.array([float(r["start_s"]) - t0 for r in grouped[name]]),
                            np.array([float(r["latency_ms"]) for r in grouped[name]]),
                            np.array([int(r["status"]) for r in grouped[name]], dtype=int),
                            np.array([r["valid"] == "1" for r in grouped[name]], dtype=bool),
                            [r["detail"] for r in grouped[name]]) for name in order}, t0


# -- tables ------------------------------------------------------------------------------------------

ENDPOINT_HEADERS = ["endpoint", "responses", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses",
                    "failures (by status)", "invalid bodies", "Locust's own p50 / p95 / p99 ms; failures"]


def counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items())) or "none"


def endpoint_rows(run: LoadRun) -> list[list[Any]]:
    own = {row["Name"]: row for row in run.locust_stats}
    rows = []
    for name, responses in run.endpoints.items():
        s = run.stats(name)
        locust = own.get(name)
        rows.append([name, len(responses), f"{run.throughput(name):.0f}", ms(s["p50"]), ms(s["p95"]), ms(s["p99"]),
                     ms(s["max"]), counts(responses.statuses()), counts(run.failures(name).statuses()),
                     run.invalid_bodies(name),
                     f"{locust['50%']} / {locust['95%']} / {locust['99%']}; {locust['Failure Count']} failures"
                     if locust else "n/a"])
    return rows


def failure_rows(run: LoadRun) -> list[list[Any]]:
    """Failures by endpoint and message: Locust's failures.csv when there is one, else the recorded details."""
    if run.locust_failures:
        return [[row["Name"], row["Error"][:160], row["Occurrences"]] for row in run.locust_failures]
    return [[name, detail[:160], n] for name in run.endpoints
            for detail, n in run.failures(name).details().most_common()]


def cores_text(cores: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in cores.items())


def echo_ratio_text(run: LoadRun, echo: Run, name: str = "/predict") -> str:
    s, e = run.stats(name), echo.stats
    return (f"{name}: {run.throughput(name):.0f} responses/s = **{run.throughput(name) / max(echo.throughput, 1e-9):.2f}x** "
            f"the echo baseline ({echo.throughput:.0f}/s); p50 {s['p50'] / e['p50']:.1f}x, p99 {s['p99'] / e['p99']:.1f}x "
            "the echo's latency")


def run_section(run: LoadRun) -> str:
    """A run's table by endpoint, its failures by message, who used the CPU and how deep the queue got."""
    failures = failure_rows(run)
    deepest = run.queue_max()
    samples = sum(1 for _, values in run.queue if REDIS_DEPTH not in values)
    return "\n\n".join([
        f"### {run.title}",
        *(f"**{line}** (during or just after this run)" for line in run.exited),
        markdown_table(ENDPOINT_HEADERS, endpoint_rows(run)),
        "Failures by message:\n\n" + markdown_table(["endpoint", "message", "occurrences"], failures)
        if failures else "No failures (every answer a 200, or a 429/503 with the contract's body and Retry-After).",
        f"- client: {run.client}; cores used during the run: {cores_text(run.cores)}.\n"
        f"- deepest queue: " + (", ".join(f"{key} {value:.0f}" for key, value in sorted(deepest.items())) or "no sample")
        + f" ({samples} samples of the API's /metrics in {run.seconds} s); most requests awaiting an answer at once "
          f"(the client's count): {max((n for _, n in run.outstanding()), default=0):.0f}.",
    ])


def files_section(paths: Sequence[Path], runs: Sequence[LoadRun]) -> str:
    lines = [f"- `{path.name}`" for path in paths]
    for run in runs:
        lines.append(f"- `{run.name}_endpoints.csv`, `{run.name}_per_second.csv`, `{run.name}_queue.csv`: the figures "
                     "and series")
        if run.locust_stats:
            lines.append(f"- `{run.name}_locust_stats.csv`, `_stats_history.csv`, `_failures.csv`, `_exceptions.csv`: "
                         "Locust's own CSVs")
    lines.append("- `raw/` (not committed): every response, client logs and stats, the log of every process")
    return "## Files\n\n" + "\n".join(lines)


def write_run_csvs(out: Path, run: LoadRun) -> None:
    """<name>_endpoints.csv (the figures), <name>_per_second.csv and <name>_queue.csv (the series)."""
    write_csv(out / f"{run.name}_endpoints.csv",
              ["endpoint", "responses", "throughput_per_s", *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "failures",
               "invalid_bodies", "statuses"],
              [[name, len(r), round(run.throughput(name), 1), *(round(run.stats(name)[f"p{p}"], 3) for p in PERCENTILES),
                round(run.stats(name)["max"], 3), len(run.failures(name)), run.invalid_bodies(name),
                counts(r.statuses())] for name, r in run.endpoints.items()])
    write_csv(out / f"{run.name}_per_second.csv",
              ["second", "endpoint", "responses", *(f"p{p}_ms" for p in PERCENTILES), "max_ms", "statuses"],
              [[row["second"], name, row["responses"], *(row[f"p{p}_ms"] for p in PERCENTILES), row["max_ms"],
                " ".join(f"{code}:{n}" for code, n in sorted(row["statuses"].items()))]
               for name in run.endpoints for row in run.per_second(name)])
    write_csv(out / f"{run.name}_queue.csv", ["t_s", "series", "value"],
              [[round(t, 3), key, value] for t, values in run.queue for key, value in values.items()])


# -- plots -------------------------------------------------------------------------------------------


def plot_run(out: Path, run: LoadRun, goals_ms: Mapping[str, float] | None = None,
             latency: Mapping[str, Responses] | None = None) -> list[Path]:
    """<name>_latency.png (per endpoint, or per group of `latency`), <name>_throughput.png (with the queue)
    and <name>_status.png."""
    goals_ms = goals_ms or {}
    groups = latency or run.endpoints
    fig, axes = figure(len(groups), f"{run.title}: latency percentiles per second")
    for ax, (name, responses) in zip(axes, groups.items(), strict=True):
        plot_percentiles(ax, responses.per_second(run.seconds), name, goals_ms.get(name))
        ax.set_yscale("log")
        ax.set_title(f"{name}: percentiles of the answers completed in each second ({run.client})", fontsize=10)
    paths = [save(fig, out / f"{run.name}_latency.png")]
    names = list(run.endpoints)

    fig, (t_ax, q_ax) = figure(2, f"{run.title}: throughput and queue over time")
    for name in names:
        per = run.per_second(name)
        t_ax.plot([r["second"] for r in per], [r["responses"] - r["statuses"].get(0, 0) for r in per], marker="o",
                  markersize=2.5, label=f"{name}: {run.throughput(name):.0f} answers/s over the run")
        ok = [sum(n for code, n in r["statuses"].items() if code == 200) for r in per]
        if len(run.endpoints[name].statuses()) > 1:
            t_ax.plot([r["second"] for r in per], ok, linestyle="--", linewidth=1, label=f"{name}: of which 200")
    if run.offered_per_s:
        t_ax.axhline(run.offered_per_s, color="grey", linestyle=":", label=f"offered {run.offered_per_s:.0f} req/s")
    t_ax.set_title("answers per second by endpoint (by completion time; transport errors left out)", fontsize=10)
    t_ax.set_xlabel("second of the run")
    t_ax.set_ylabel("responses / s")
    t_ax.set_ylim(bottom=0)
    t_ax.grid(alpha=0.3)
    handles, labels = t_ax.get_legend_handles_labels()
    if run.users:
        u_ax = t_ax.twinx()
        line = u_ax.step([t for t, _ in run.users], [u for _, u in run.users], where="post", color="grey", alpha=0.6,
                         label="Locust users (right axis)")
        u_ax.set_ylabel("users")
        u_ax.set_ylim(bottom=0)
        handles, labels = handles + line, labels + ["Locust users (right axis)"]
    t_ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    plot_queue(q_ax, run.queue, run.outstanding())
    paths.append(save(fig, out / f"{run.name}_throughput.png"))

    fig, axes = figure(len(names), f"{run.title}: status codes per second")
    for ax, name in zip(axes, names, strict=True):
        plot_statuses(ax, run.per_second(name), name)
        if clip_outlier(ax, [row["responses"] for row in run.per_second(name)]):
            ax.legend(fontsize=8, loc="upper left")  # the clipped total is written at the top right
    paths.append(save(fig, out / f"{run.name}_status.png"))
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


def plot_queue(ax: Any, queue: Sequence[tuple[float, Mapping[str, float]]],
               outstanding: Sequence[tuple[float, float]] = ()) -> None:
    """The queue gauges (left axis) and, on the right axis, the requests the client was waiting for."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, values in queue:
        for key, value in values.items():
            series[key].append((t, value))
    for key, points in sorted(series.items(), key=lambda item: item[0] == REDIS_DEPTH):
        label = key if key == REDIS_DEPTH else f"API /metrics: {key}"
        ax.plot([t for t, _ in points], [v for _, v in points], marker=".", markersize=2, linewidth=1,
                linestyle=":" if key == REDIS_DEPTH else "-", label=label)
    ax.set_title(f"queue depth, sampled every {QUEUE_INTERVAL_S * 1000:.0f} ms (a gap: the API did not answer /metrics "
                 "in time)", fontsize=10)
    ax.set_xlabel("second of the run")
    ax.set_ylabel("requests in the Redis queue")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if outstanding:
        o_ax = ax.twinx()
        label = "requests awaiting an answer (the client's count: sent, or due if open loop; right axis)"
        handles += o_ax.plot([t for t, _ in outstanding], [n for _, n in outstanding], color="black", linewidth=1.2,
                             alpha=0.7, label=label)
        labels.append(label)
        o_ax.set_ylabel("requests outstanding")
        o_ax.set_ylim(bottom=0)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
