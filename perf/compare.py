"""Scenario `compare`: this project and the two simpler designs users compare it with, one model, one run.

Issue 17. Three designs, one after the other, each on a fresh stack of its own (Redis, the S3 stand-in,
the comparison model of perf/references.py published and promoted before any server starts, so all three
load that one artifact), each served by waitress with 16 threads and keep-alive:

- `inprocess`: Flask calling the model in the view (perf/references.py);
- `celery`: Flask sending one Celery task per request and waiting with `.get()`, one prefork worker with
  QUEUE_WORKERS processes (perf/references.py);
- `project`: this project with its defaults (perf/common.py's `Stack`, one worker).

For each: the server CPU per prediction at fixed offered rates (open loop, `perf.loadgen paced`), the
valid answers per second at saturation (closed loop at 16, 64 and 256 connections) and the capacity
(perf/capacity.py's search: the highest offered rate with p99 <= 100 ms and every answer a valid 200).

Goals of issue 17: (2) the project's server CPU per prediction at every fixed rate <= the in-process
reference's; (3) the project's capacity >= 1.2x the in-process reference's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

from devtools.processes import PYTHON, ManagedProcess
from perf import capacity
from perf.capacity import Target
from perf.common import (
    CpuMeter,
    Responses,
    Stack,
    StackError,
    begin,
    figure,
    free_loopback_port,
    machine_markdown,
    managed,
    markdown_table,
    ms,
    run_client,
    save,
    wait_http,
)
from perf.http_bench import Run
from perf.references import ESTIMATORS, MAX_DEPTH, predict_time_us, promoted
from settings import load_settings
from tasks import demo_model

DESIGNS = {"inprocess": "Flask, model in the view", "celery": "Flask -> Celery task -> .get()",
           "project": "this project (defaults)"}
GOAL_CAPACITY_RATIO = 1.2
N_FEATURES = len(demo_model.FEATURES)
TREE_COLOURS = {"http server": "tab:blue", "worker": "tab:orange", "redis": "tab:red", "s3": "tab:grey"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 s runs, capacity search at its --quick setting")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="which designs, in this order")
    parser.add_argument("--rates", default="300,600", help="fixed offered rates for CPU per prediction (req/s)")
    parser.add_argument("--rate-s", type=float, default=None, help="length of each fixed-rate run (default 15, --quick 6)")
    parser.add_argument("--connections", default="16,64,256", help="closed-loop connection counts")
    parser.add_argument("--load-s", type=float, default=None, help="length of each closed-loop run (default 15, --quick 6)")
    parser.add_argument("--start-rate", type=float, default=200.0, help="first step of the capacity search (req/s)")
    args = parser.parse_args(argv)
    args.designs = [name.strip() for name in args.designs.split(",") if name.strip()]
    if not args.designs or set(args.designs) - set(DESIGNS):
        parser.error(f"--designs: choose from {', '.join(DESIGNS)}")
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.connections = [int(count) for count in args.connections.split(",")]
    args.rate_s = args.rate_s or (6.0 if args.quick else 15.0)
    args.load_s = args.load_s or (6.0 if args.quick else 15.0)
    args.idle_s = 3.0 if args.quick else 10.0
    args.search = capacity.parse_args([*(["--quick"] if args.quick else []), "--start-rate", str(args.start_rate)])
    return args


def cpu_ms_per_answer(cpu_s: Mapping[str, float], answers: int) -> dict[str, float]:
    """CPU milliseconds per valid answer for each process tree and in `total` (NaN without answers)."""
    per = {name: seconds * 1000 / answers if answers else float("nan") for name, seconds in cpu_s.items()}
    return {**per, "total": sum(per.values()) if answers else float("nan")}


def not_answered(responses: Responses) -> str:
    """What came back instead of a valid 200, by status ("0" when everything was answered)."""
    statuses = {code: count for code, count in sorted(responses.statuses().items()) if code != "200"}
    invalid = int((~responses.valid & (responses.status == 200)).sum())
    parts = [f"{count} {code}" for code, count in statuses.items()] + ([f"{invalid} invalid 200"] if invalid else [])
    return ", ".join(parts) or "0"


@dataclass
class Fixed:
    """One fixed-rate run: its responses and the CPU seconds of each process tree over it."""

    rate: float
    responses: Responses
    cpu_s: dict[str, float]
    pipeline: dict[str, float]  # the project's micro-batches (perf/capacity.py's `pipeline`)

    @property
    def answers(self) -> int:
        return int((self.responses.valid & (self.responses.status == 200)).sum())

    @property
    def cpu_ms(self) -> dict[str, float]:
        return cpu_ms_per_answer(self.cpu_s, self.answers)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.responses.latency_ms, 99)) if len(self.responses) else float("nan")


@dataclass
class Measured:
    design: str
    idle: dict[str, float]
    fixed: list[Fixed]
    closed: list[tuple[int, Run]]
    steps: list[capacity.Step]

    @property
    def capacity(self) -> float:
        return capacity.capacity_of(self.steps)


@contextlib.contextmanager
def serving(design: str, log_dir: Path) -> Iterator[tuple[Target, Stack]]:
    """A fresh stack with `design` serving /predict on it, as the target the clients drive and measure."""
    project = design == "project"
    with Stack(log_dir, worker_processes=1 if project else 0, api=project, publish=("perf.references", "publish")) as stack, \
            contextlib.ExitStack() as running:
        services = {"redis": stack.services[0].process.pid, "s3": stack.services[1].process.pid}  # type: ignore[union-attr]
        if project:
            roots = {"http server": stack.api.pid, "worker": stack.workers[0].pid, **services}
            yield Target(stack.port, roots, stack.queue_probe().depth, stack), stack
            return
        port = free_loopback_port()
        env = {**stack.env, "PORT": str(port)}
        roots = {}
        if design == "celery":
            worker = managed(running, ManagedProcess("reference-worker", [PYTHON, "-m", "perf.references", "celery-worker"],
                                                     env, log_dir))
            worker.wait_for(lambda: " ready." in worker.output(), stack.ready_timeout_s, "the Celery worker's ready line")
            roots["worker"] = worker.pid
        command = "celery-api" if design == "celery" else "inprocess"
        server = managed(running, ManagedProcess(f"reference-{design}", [PYTHON, "-m", "perf.references", command], env,
                                                 log_dir))
        wait_http(f"http://127.0.0.1:{port}/healthz", stack.ready_timeout_s, server)
        broker = redis.Redis.from_url(stack.redis_url, socket_timeout=2)
        yield Target(port, {"http server": server.pid, **roots, **services},
                     lambda: int(broker.llen("celery")) if design == "celery" else 0), stack  # type: ignore[arg-type]


def warm_up(port: int) -> None:
    """Twenty answers through the whole path (connections, model loaded in every process that has one)."""
    for i in range(20):
        response = requests.post(f"http://127.0.0.1:{port}/predict", json={"features": [50.0 + i] * N_FEATURES}, timeout=30)
        if response.status_code != 200:
            raise StackError(f"warm-up /predict answered {response.status_code}: {response.text[:300]}")


def load_args(*extra: str) -> list[str]:
    return ["--kind", "predict", "--path", "/predict", "--n-features", str(N_FEATURES), *extra]


def fixed_rate(args: argparse.Namespace, raw: Path, target: Target, rate: float) -> Fixed:
    capacity.wait_drained(target)
    print(f"compare: {rate:.0f} req/s for {args.rate_s:g} s", flush=True)
    meter = CpuMeter(target.roots)
    client = run_client("paced", target.port, raw / f"rate-{rate:.0f}.csv", raw, timeout_s=args.rate_s + 60, args=load_args(
        "--rate", f"{rate:g}", "--connections", "256", "--preopen", "32", "--duration-s", str(args.rate_s), "--grace-s", "15"))
    cpu_s, t0 = meter.cpu_seconds(), float(client.get("t0_epoch", 0))
    batches = capacity.pipeline(target.stack, t0, t0 + args.rate_s + 15) if target.stack else capacity.no_pipeline()
    return Fixed(rate, Responses.read(raw / f"rate-{rate:.0f}.csv"), cpu_s, batches)


def idle_cores(target: Target, seconds: float) -> dict[str, float]:
    """Cores each process tree uses with no request at all: the design's own background work."""
    capacity.wait_drained(target)
    meter = CpuMeter(target.roots)
    time.sleep(seconds)
    return meter.cores_used()


def closed_loop(args: argparse.Namespace, raw: Path, target: Target, connections: int) -> Run:
    capacity.wait_drained(target)
    print(f"compare: closed loop, {connections} connections for {args.load_s:g} s", flush=True)
    meter = CpuMeter(target.roots)
    client = run_client("load", target.port, raw / f"load-{connections}.csv", raw, timeout_s=args.load_s + 60,
                        args=load_args("--connections", str(connections), "--duration-s", str(args.load_s), "--grace-s", "20"))
    window = argparse.Namespace(warmup_s=min(2.0, args.load_s / 4), duration_s=args.load_s)
    return Run(f"{connections} connections", Responses.read(raw / f"load-{connections}.csv"), client, meter.cores_used(),
               window)


def measure(args: argparse.Namespace, raw: Path, design: str, model: dict[str, Any]) -> Measured:
    out = raw / design
    out.mkdir(parents=True, exist_ok=True)
    print(f"compare: {design} ({DESIGNS[design]})", flush=True)
    with serving(design, out / "logs") as (target, stack):
        if not model:  # once, on the first stack, before any load
            loaded = promoted(load_settings(redis_url=stack.redis_url, s3_endpoint=stack.env["S3_ENDPOINT"]))
            model.update(version=loaded.version, **predict_time_us(loaded))
        warm_up(target.port)
        idle = idle_cores(target, args.idle_s)
        fixed = [fixed_rate(args, out, target, rate) for rate in args.rates]
        closed = [(count, closed_loop(args, out, target, count)) for count in args.connections]
        steps = capacity.search(args.search, out, target, N_FEATURES)
    return Measured(design, idle, fixed, closed, steps)


# -- report --------------------------------------------------------------------------------------------


def ratio(value: float, reference: float) -> float:
    return value / reference if reference and reference == reference else float("nan")


def goals(results: dict[str, Measured], rates: list[float]) -> list[list[str]]:
    base, project = results.get("inprocess"), results.get("project")
    if base is None or project is None:
        return [["(2) and (3)", "n/a: needs both `inprocess` and `project` in the run", ""]]
    rows = []
    for mine, theirs in zip(project.fixed, base.fixed, strict=True):
        met = mine.cpu_ms["total"] <= theirs.cpu_ms["total"]
        rows.append([f"(2) server CPU per prediction at {mine.rate:.0f} req/s <= in-process",
                     f"{mine.cpu_ms['total']:.2f} vs {theirs.cpu_ms['total']:.2f} ms", "met" if met else "**missed**"])
    capacity_ratio = ratio(project.capacity, base.capacity)
    rows.append([f"(3) capacity at p99 <= {capacity.GOAL_P99_MS:g} ms >= {GOAL_CAPACITY_RATIO:g}x in-process",
                 f"{project.capacity:.0f} vs {base.capacity:.0f} req/s ({capacity_ratio:.2f}x)",
                 "met" if capacity_ratio >= GOAL_CAPACITY_RATIO else "**missed**"])
    return rows


def idle_note(cores: Mapping[str, float]) -> str:
    busy = ", ".join(f"{tree} {value:.2f}" for tree, value in cores.items() if value)
    return f"{sum(cores.values()):.2f}" + (f" ({busy})" if busy else "")


def side_by_side(results: dict[str, Measured], args: argparse.Namespace) -> str:
    base = results.get("inprocess")
    rows: list[list[Any]] = [
        ["idle server CPU (cores, no request)", *(idle_note(m.idle) for m in results.values())],
        [f"capacity, p99 <= {capacity.GOAL_P99_MS:g} ms (req/s)", *(f"{m.capacity:.0f}" for m in results.values())],
        ["capacity / in-process", *(f"{ratio(m.capacity, base.capacity if base else 0):.2f}" for m in results.values())]]
    for index, count in enumerate(args.connections):
        rows.append([f"closed loop, {count} connections: valid answers/s (p50 / p99 ms; not answered; cached)",
                     *(f"{run.goodput:.0f} ({ms(run.answered_stats['p50'])} / {ms(run.answered_stats['p99'])}; "
                       f"{not_answered(run.responses)}; {run.responses.details()['cached']})"
                       for run in (m.closed[index][1] for m in results.values()))])
    for index, rate in enumerate(args.rates):
        rows.append([f"server CPU ms per prediction at {rate:.0f} req/s (valid answers, p99 ms)",
                     *(f"**{f.cpu_ms['total']:.2f}** ({f.answers} of {len(f.responses)}, {ms(f.p99)})"
                       + (" above its capacity" if f.p99 > capacity.GOAL_P99_MS else "")
                       for f in (m.fixed[index] for m in results.values()))])
        rows.append([f"CPU per prediction / in-process at {rate:.0f} req/s",
                     *(f"{ratio(m.fixed[index].cpu_ms['total'], base.fixed[index].cpu_ms['total'] if base else 0):.2f}"
                       for m in results.values())])
    return markdown_table(["", *(DESIGNS[name] for name in results)], rows)


def per_tree(results: dict[str, Measured]) -> str:
    rows: list[list[Any]] = []
    for m in results.values():
        for f in m.fixed:
            cpu = f.cpu_ms
            batches = f"{f.pipeline['batches']} of {f.pipeline['mean_batch']:.1f}" if f.pipeline["batches"] else "-"
            rows.append([DESIGNS[m.design], f"{f.rate:.0f}", *(f"{cpu[t]:.3f}" if t in cpu else "-" for t in TREE_COLOURS),
                         f"**{cpu['total']:.3f}**", f.answers, not_answered(f.responses), ms(f.p99), batches])
    return markdown_table(["design", "offered/s", *(f"{t} ms" for t in TREE_COLOURS), "total ms", "valid answers",
                           "not answered", "p99 ms", "micro-batches (count of mean size)"], rows)


def summary(info: dict[str, Any], args: argparse.Namespace, model: dict[str, Any], results: dict[str, Measured]) -> str:
    def note(step: capacity.Step) -> str:
        return "held" if step.held else f"missed (p99 {ms(step.stats['p99'])} ms, {step.errors} errors)"

    searches = "\n".join(f"- {DESIGNS[m.design]}: " + ", ".join(f"{step.rate:.0f} {note(step)}" for step in m.steps)
                         for m in results.values())
    return "\n\n".join([
        f"# compare: this project against the in-process and the one-task-per-request designs ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "## Model\n\n" + markdown_table(["model", "version", "single-row predict", "per row of a 32-row predict"], [[
            f"GradientBoostingRegressor(n_estimators={ESTIMATORS}, max_depth={MAX_DEPTH}) over the demo's "
            f"{N_FEATURES} features", model["version"], f"{model['single_row_us']:.0f} µs",
            f"{model['per_row_of_32_us']:.1f} µs"]]) + "\n\nIn-process `LoadedModel.predict` in the scenario's "
        "process, median over 300 calls (30 for the batch), with the machine otherwise as loaded as it was.",
        "## Goals\n\n" + markdown_table(["goal", "figures", "verdict"], goals(results, args.rates)),
        "## Side by side\n\n" + side_by_side(results, args),
        "## Server CPU per prediction, per process tree (ms)\n\n" + per_tree(results) + "\n\n"
        "CPU seconds (user + system, from /proc) of each process tree of the design over the client's run, divided "
        "by the valid answers: `http server` is the project's API or the reference's Flask process, `worker` the "
        "Celery worker and its pool processes, `redis` and `s3` the stack's servers (the S3 stand-in is idle on "
        "/predict after start-up; it is counted so that nothing the design runs is left out). The load client's "
        "CPU is not counted. A design offered more than its capacity (p99 above "
        f"{capacity.GOAL_P99_MS:g} ms) still answers, late: its figure is the CPU of a saturated server. `idle server "
        "CPU` (side by side, above) is the same trees with no request at all, over "
        f"{args.idle_s:g} s after the warm-up: background work that the predictions of a low rate share.",
        f"## Set-up\n\nFixed rates {args.rate_s:g} s each (pool of up to 256 connections); closed loops {args.load_s:g} s "
        f"each, the first {min(2.0, args.load_s / 4):g} s left out; capacity steps of {args.search.step_s:g} s from "
        f"{args.search.start_rate:g} req/s, x{args.search.factor:g}, {args.search.bisect} bisection step(s):\n\n" + searches,
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `compare.png`: CPU per prediction by process tree at each fixed rate; capacity and closed-loop "
        "answers per design\n- `results.json`: every figure above\n- `raw/<design>/`: every response, client stats, "
        "process logs",
    ]) + "\n"


def as_json(model: dict[str, Any], results: dict[str, Measured], info: dict[str, Any]) -> dict[str, Any]:
    return {"machine": info, "model": model, "designs": {name: {
        "capacity_per_s": m.capacity,
        "fixed": [{"rate": f.rate, "responses": len(f.responses), "valid_answers": f.answers,
                   "statuses": dict(f.responses.statuses()),
                   "p99_ms": f.p99, "cpu_s": f.cpu_s, "cpu_ms_per_prediction": f.cpu_ms, "micro_batches": f.pipeline}
                  for f in m.fixed],
        "idle_cores": m.idle,
        "closed": [{"connections": count, "valid_per_s": run.goodput, "p50_ms": run.answered_stats["p50"],
                    "p99_ms": run.answered_stats["p99"], "statuses": dict(run.responses.statuses()),
                    "cached": run.responses.details()["cached"]} for count, run in m.closed],
        "steps": [{"rate": s.rate, "achieved": s.achieved, "p99_ms": s.stats["p99"], "errors": s.errors, "held": s.held}
                  for s in m.steps]} for name, m in results.items()}}


def plot(out: Path, results: dict[str, Measured], args: argparse.Namespace) -> None:
    fig, (cpu_ax, cap_ax) = figure(2, "compare: server CPU per prediction, and capacity", height=4.0)
    width, labelled = 0.8 / len(results), set()
    for r_index in range(len(args.rates)):
        for d_index, m in enumerate(results.values()):
            x, bottom, cpu = r_index + d_index * width, 0.0, m.fixed[r_index].cpu_ms
            for tree, colour in TREE_COLOURS.items():
                if tree in cpu and cpu[tree] == cpu[tree]:
                    cpu_ax.bar(x, cpu[tree], width * 0.9, bottom=bottom, color=colour,
                               label=None if tree in labelled else tree)
                    labelled.add(tree)
                    bottom += cpu[tree]
            cpu_ax.text(x, bottom, f"{m.design}\n{bottom:.2f}", ha="center", va="bottom", fontsize=7)
    cpu_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(args.rates))], [f"{r:.0f} req/s offered" for r in args.rates])
    cpu_ax.set_ylabel("server CPU ms per valid answer")
    cpu_ax.set_ylim(0, cpu_ax.get_ylim()[1] * 1.2)  # room for the labels above the bars
    cpu_ax.grid(alpha=0.3, axis="y")
    handles = dict(zip(*reversed(cpu_ax.get_legend_handles_labels()), strict=True))
    cpu_ax.legend([handles[t] for t in TREE_COLOURS if t in handles], [t for t in TREE_COLOURS if t in handles], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), title="process tree")
    series = [(f"capacity, p99 <= {capacity.GOAL_P99_MS:g} ms", [m.capacity for m in results.values()])]
    series += [(f"closed loop {count} conn", [m.closed[i][1].goodput for m in results.values()])
               for i, count in enumerate(args.connections)]
    width = 0.8 / len(series)
    for s_index, (label, values) in enumerate(series):
        xs = [d + s_index * width for d in range(len(results))]
        cap_ax.bar(xs, values, width * 0.9, label=label, hatch="" if s_index == 0 else "//", alpha=1 if s_index == 0 else 0.6)
        for x, value in zip(xs, values, strict=True):
            cap_ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    cap_ax.set_xticks([d + 0.4 - width / 2 for d in range(len(results))], [DESIGNS[name] for name in results])
    cap_ax.set_ylabel("req/s (valid answers)")
    cap_ax.set_ylim(0, cap_ax.get_ylim()[1] * 1.1)
    cap_ax.grid(alpha=0.3, axis="y")
    cap_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out / "compare.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("compare")
    model: dict[str, Any] = {}
    results = {design: measure(args, raw, design, model) for design in args.designs}
    plot(out, results, args)
    (out / "summary.md").write_text(summary(info, args, model, results))
    (out / "results.json").write_text(json.dumps(as_json(model, results, info), indent=2, default=float))
    for row in goals(results, args.rates):
        print(f"compare: {row[0]}: {row[1]}: {row[2].strip('*')}", flush=True)
    print(f"compare: summary in {out / 'summary.md'}", flush=True)
    # Functional failure: an answer that breaks the contract (an error status with the error body is a figure).
    responses = [f.responses for m in results.values() for f in m.fixed] + [
        run.responses for m in results.values() for _, run in m.closed] + [s.responses for m in results.values() for s in m.steps]
    return 1 if sum(r.invalid().total() - int((r.status == 0).sum()) for r in responses) else 0


if __name__ == "__main__":
    raise SystemExit(main())
