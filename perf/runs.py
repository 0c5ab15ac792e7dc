"""The load client (`python -m perf.loadgen`) as a child process, its runs as figures, and what several scenarios
do around them: the echo baseline, a warm-up, waiting for the queue to empty."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from devtools.processes import PYTHON, ManagedProcess, http_ok
from devtools.services import free_port
from perf.loadgen import N_FEATURES
from perf.measure import CpuMeter, Responses, latency_stats
from perf.results import STAT_COLUMNS, cores_text, counts, ms, stat_cells
from perf.stack import StackError, child_env, wait_child

DRAIN_WAIT_S = 15.0


def loadgen(mode: str, port: int, out: Path, log_dir: Path, args: Sequence[str]) -> ManagedProcess:
    """`python -m perf.loadgen MODE` against 127.0.0.1:`port`, every response to `out` (not started)."""
    command = [PYTHON, "-m", "perf.loadgen", mode, "--port", str(port), "--out", str(out), *args]
    return ManagedProcess(f"{out.stem}.client", command, child_env({}), log_dir)


def client_stats(process: ManagedProcess, out: Path) -> dict[str, Any]:
    """The stats line the client printed last, also kept as raw/<name>.stats.json."""
    lines = [line for line in process.output().splitlines() if line.startswith("{")]
    stats = json.loads(lines[-1]) if lines else {}
    out.with_suffix(".stats.json").write_text(json.dumps(stats, indent=2))
    return dict(stats)


def run_client(mode: str, port: int, out: Path, *, timeout_s: float, args: Sequence[str] = (),
               status: Callable[[], str] = lambda: "") -> dict[str, Any]:
    """Run the client to completion (bounded by `timeout_s`); its stats."""
    with loadgen(mode, port, out, out.parent, args) as process:
        wait_child(process, f"load client {out.stem}", timeout_s, status)
    if process.process is None or process.process.returncode != 0:
        raise StackError(f"load client {out.stem} failed: see {process.log_path}")
    return client_stats(process, out)


@contextlib.contextmanager
def probing(port: int, raw: Path, probes: Mapping[str, Sequence[str]]) -> Iterator[dict[str, Path]]:
    """`perf.loadgen probe` beside the block, one per name in `probes` (its arguments), each stopping on its own
    `--duration-s`; yields each one's responses file (raw/<name>.csv), waited for on the way out."""
    files = {name: raw / f"{name}.csv" for name in probes}
    with contextlib.ExitStack() as running:
        processes = {name: running.enter_context(loadgen("probe", port, files[name], raw, args))
                     for name, args in probes.items()}
        yield files
        for name, process in processes.items():
            wait_child(process, name, 30)
            if process.process is None or process.process.returncode != 0:
                raise StackError(f"the {name} probe failed: see {process.log_path}")
            client_stats(process, files[name])


def stats_of(responses_csv: Path) -> dict[str, Any]:
    """The client stats kept beside a responses file."""
    return dict(json.loads(responses_csv.with_suffix(".stats.json").read_text()))


class Run:
    """One client run: its responses, the figures over a window of it (by completion time), the CPU of the
    process trees measured beside it and the client's own."""

    HEADERS = ["run", "responses/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses (whole run)", "invalid", "cores used"]
    CSV_COLUMNS = ["responses_in_window", "throughput_per_s", *STAT_COLUMNS, "non_200", "invalid_bodies"]

    def __init__(self, name: str, responses: Responses, client: Mapping[str, Any], meter: CpuMeter | None,
                 window: tuple[float, float]) -> None:
        self.name, self.responses, self.client = name, responses, dict(client)
        self.cpu_s = meter.cpu_seconds() if meter else {}
        self.cores = meter.cores_used() if meter else {}
        self.cores["client"] = round(client.get("cpu_s", 0) / max(float(client.get("wall_s", 1)), 1e-9), 2)
        start, end = window
        done = responses.end_s
        self.window = responses.where((done >= start) & (done < end))
        self.throughput = len(self.window) / (end - start)
        self.stats = latency_stats(self.window.latency_ms)
        answered = self.window.where(self.window.ok)
        self.goodput = len(answered) / (end - start)
        self.answered_stats = latency_stats(answered.latency_ms)
        self.per_second = responses.per_second(int(np.ceil(end)))

    def row(self) -> list[Any]:
        s = self.stats
        return [self.name, f"{self.throughput:.0f}", ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), ms(s["max"]),
                counts(self.responses.statuses()), sum(self.responses.invalid().values()), cores_text(self.cores)]

    def csv_cells(self) -> list[Any]:
        """The CSV_COLUMNS of this run."""
        return [len(self.window), round(self.throughput, 1), *stat_cells(self.stats), int((self.responses.status != 200).sum()),
                self.responses.invalid().total()]


def drive(raw: Path, name: str, port: int, roots: Mapping[str, int], *, seconds: float, warmup_s: float = 0.0,
          mode: str = "load", args: Sequence[str] = (), label: str = "", grace_s: float = 20.0,
          status: Callable[[], str] = lambda: "") -> Run:
    """`perf.loadgen MODE` for `seconds` (responses in raw/<name>.csv) with the CPU of `roots` measured meanwhile;
    figures over the run less its first `warmup_s`."""
    meter = CpuMeter(roots)
    client = run_client(mode, port, raw / f"{name}.csv", timeout_s=seconds + grace_s + 30, status=status,
                        args=[*args, "--duration-s", str(seconds), "--grace-s", str(grace_s)])
    return Run(label or name, Responses.read(raw / f"{name}.csv"), client, meter, (warmup_s, seconds))


@contextlib.contextmanager
def echo_server(log_dir: Path, name: str, threads: int, flask: bool = False) -> Iterator[tuple[int, ManagedProcess]]:
    """perf/echo.py serving on a free port (`flask`: the one-route Flask echo), ready: its port and process."""
    port = free_port()
    command = [PYTHON, "-m", "perf.echo", "--serve", "--port", str(port), "--threads", str(threads), *(["--flask"] if flask else [])]
    with ManagedProcess(name, command, child_env({}), log_dir) as server:
        server.wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/echo", 405 if flask else 200), 30, "/echo")  # Flask: POST only
        yield port, server


def echo_baseline(raw: Path, seconds: float, connections: int = 64, threads: int = 16, flask: bool = False) -> Run:
    """The echo server (`flask`: the one-route Flask echo) driven like /predict: closed loop over `connections` for
    `seconds`, the first 2 s (at most a quarter) left out."""
    name = "flask-echo" if flask else "echo"
    print(f"{name} baseline: {connections} connections for {seconds:g} s", flush=True)
    (raw / "logs").mkdir(parents=True, exist_ok=True)
    with echo_server(raw / "logs", name, threads, flask) as (port, server):
        return drive(raw, name, port, {f"{name} server": server.pid}, seconds=seconds, warmup_s=min(2.0, seconds / 4),
                     args=["--path", "/echo", "--connections", str(connections)],
                     label="echo (Flask on waitress)" if flask else "echo (bare waitress)")


def warm_up(url: str) -> None:
    """Twenty answers through the whole path (connections, model loaded, pools) before anything is measured."""
    for i in range(20):
        response = requests.post(f"{url}/predict", json={"features": [50.0 + i] * N_FEATURES}, timeout=30)
        if response.status_code != 200:
            raise StackError(f"warm-up /predict answered {response.status_code}: {response.text[:300]}")


def wait_drained(depth: Callable[[], int]) -> None:
    """Until the queue is empty (bounded): a run must not start behind the previous one's work."""
    deadline = time.monotonic() + DRAIN_WAIT_S
    while time.monotonic() < deadline and depth() > 0:
        time.sleep(0.1)
    time.sleep(0.5)


def scenario_parser(name: str, doc: str | None, quick: str, *, threads: int = 0, processes: int = 0, workers: int = 2,
                    pool: int = 0, preopen: int = 0, runs: bool = False) -> argparse.ArgumentParser:
    """A scenario's options: `--quick` (what it shortens), the stack's HTTP_THREADS, HTTP_PROCESSES and QUEUE_WORKERS
    where the scenario sets them, the open-loop client's pool where it uses one, and with `runs` the length of each
    closed-loop run and its warm-up (see `parse`)."""
    parser = argparse.ArgumentParser(prog=f"python -m perf --scenario {name}", description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    if runs:
        parser.add_argument("--duration-s", type=float, default=None, help="length of each run (default 20, --quick 8)")
        parser.add_argument("--warmup-s", type=float, default=None, help="left out of the figures (default 2, --quick 1)")
    if threads:
        parser.add_argument("--threads", type=int, default=threads, help="HTTP_THREADS of each API process")
    if processes:
        parser.add_argument("--processes", type=int, default=processes, help="HTTP_PROCESSES: API processes on the port")
    if workers:
        parser.add_argument("--workers", type=int, default=workers, help="QUEUE_WORKERS (pool processes of the worker)")
    if pool:
        parser.add_argument("--pool", type=int, default=pool, help="most connections the open-loop client opens")
        parser.add_argument("--preopen", type=int, default=preopen, help="connections opened before its clock starts")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, **defaults: tuple[float, float]) -> argparse.Namespace:
    """The options, those left unset by `--quick` (`by_quick`); a warm-up shorter than its run."""
    args = by_quick(parser.parse_args(argv), **defaults)
    if hasattr(args, "warmup_s"):
        by_quick(args, duration_s=(20.0, 8.0), warmup_s=(2.0, 1.0))
        if args.warmup_s >= args.duration_s:
            parser.error("--warmup-s must be shorter than --duration-s")
    return args


def by_quick(args: argparse.Namespace, **defaults: tuple[float, float]) -> argparse.Namespace:
    """Options left unset take their default, `name=(full run, --quick)`."""
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def server_env(args: argparse.Namespace, **more: str) -> dict[str, str]:
    """The settings of the stack from the scenario's options."""
    env = {"QUEUE_WORKERS": str(args.workers), "HTTP_THREADS": str(args.threads)}
    if getattr(args, "processes", 0):
        env["HTTP_PROCESSES"] = str(args.processes)
    return {**env, **more}
