"""Scenario `compare` (issue 17): this project and the two designs users compare it with (Flask calling the model
in the view; Flask sending one Celery task per request), each on a fresh stack serving one model: server CPU per
prediction at fixed rates, valid answers per second at saturation, and capacity (perf/capacity.py's search).
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

import redis

from devtools.processes import PYTHON, ManagedProcess, http_ok
from devtools.services import free_port
from perf import capacity
from perf.capacity import Step, Target
from perf.measure import CpuMeter, Responses
from perf.references import ESTIMATORS, MAX_DEPTH, predict_time_us, promoted
from perf.results import begin, figure, goals, markdown_table, ms, save, style, write_summary
from perf.runs import N_FEATURES, Run, by_quick, drive, scenario_parser, wait_drained, warm_up
from perf.stack import Stack
from settings import load_settings

DESIGNS = {"inprocess": "Flask, model in the view", "celery": "Flask -> Celery task -> .get()",
           "project": "this project (defaults)"}
GOAL_CAPACITY_RATIO = 1.2
TREE_COLOURS = {"http server": "tab:blue", "worker": "tab:orange", "redis": "tab:red", "s3": "tab:grey"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = scenario_parser("compare", __doc__, "6 s runs, capacity search at its --quick setting", workers=0)
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
    by_quick(args, rate_s=(15.0, 6.0), load_s=(15.0, 6.0))
    args.idle_s = 3.0 if args.quick else 10.0
    args.search = capacity.parse_args([*(["--quick"] if args.quick else []), "--start-rate", str(args.start_rate)])
    return args


def cpu_ms_per_answer(cpu_s: Mapping[str, float], answers: int) -> dict[str, float]:
    """CPU milliseconds per valid answer for each process tree and in `total` (NaN without answers)."""
    per = {name: seconds * 1000 / answers if answers else float("nan") for name, seconds in cpu_s.items()}
    return {**per, "total": sum(per.values()) if answers else float("nan")}


def not_answered(responses: Responses) -> str:
    """What came back instead of a valid 200, by status ("0" when everything was answered)."""
    parts = [f"{count} {code}" for code, count in sorted(responses.statuses().items()) if code != "200"]
    invalid = int((~responses.valid & (responses.status == 200)).sum())
    return ", ".join(parts + ([f"{invalid} invalid 200"] if invalid else [])) or "0"


def cpu_ms(fixed: Step) -> dict[str, float]:
    """CPU milliseconds per valid answer of a fixed-rate run, per process tree and in `total`."""
    return cpu_ms_per_answer(fixed.run.cpu_s, fixed.answers)


@dataclass
class Measured:
    design: str
    idle: dict[str, float]
    fixed: list[Step]  # the fixed-rate runs, as steps of a search
    closed: list[Run]
    steps: list[Step]

    @property
    def capacity(self) -> float:
        return capacity.capacity_of(self.steps)


@contextlib.contextmanager
def serving(design: str, log_dir: Path) -> Iterator[tuple[Target, Stack]]:
    """A fresh stack with `design` serving /predict on it, as the target the clients drive and measure."""
    project = design == "project"
    with Stack(log_dir, workers=1 if project else 0, api=project, publish=("perf.references", "publish")) as stack:
        assert stack.redis.process is not None and stack.s3.process is not None
        services = {"redis": stack.redis.process.pid, "s3": stack.s3.process.pid}
        if project:
            yield Target(stack.port, {"http server": stack.api.pid, "worker": stack.workers[0].pid, **services},
                         stack.queue_probe().depth, stack), stack
            return
        port, roots = free_port(), {}
        env = {**stack.env, "PORT": str(port)}
        if design == "celery":
            worker = stack.add(ManagedProcess("reference-worker", [PYTHON, "-m", "perf.references", "celery-worker"], env, log_dir))
            worker.wait_for(lambda: " ready." in worker.output(), 90, "the Celery worker's ready line")
            roots["worker"] = worker.pid
        command = [PYTHON, "-m", "perf.references", "celery-api" if design == "celery" else "inprocess"]
        server = stack.add(ManagedProcess(f"reference-{design}", command, env, log_dir))
        server.wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 90, "/healthz")
        broker = redis.Redis.from_url(stack.redis_url, socket_timeout=2)
        depth = (lambda: int(broker.llen("celery"))) if design == "celery" else (lambda: 0)  # type: ignore[arg-type]
        yield Target(port, {"http server": server.pid, **roots, **services}, depth), stack


def measure(args: argparse.Namespace, raw: Path, design: str, model: dict[str, Any]) -> Measured:
    out = raw / design
    out.mkdir(parents=True, exist_ok=True)
    print(f"compare: {design} ({DESIGNS[design]})", flush=True)
    with serving(design, out / "logs") as (target, stack):
        if not model:  # once, on the first stack, before any load
            loaded = promoted(load_settings(redis_url=stack.redis_url, s3_endpoint=stack.env["S3_ENDPOINT"]))
            model.update(version=loaded.version, **predict_time_us(loaded))
        warm_up(f"http://127.0.0.1:{target.port}")
        wait_drained(target.depth)
        meter = CpuMeter(target.roots)
        time.sleep(args.idle_s)
        idle = meter.cores_used()  # the design's own background work, with no request at all
        fixed, closed = [], []
        for rate in args.rates:
            wait_drained(target.depth)
            print(f"compare: {rate:.0f} req/s for {args.rate_s:g} s", flush=True)
            run = drive(out, f"rate-{rate:.0f}", target.port, target.roots, mode="paced", seconds=args.rate_s, grace_s=15,
                        args=["--rate", f"{rate:g}", "--connections", "256", "--preopen", "32"])
            t0 = float(run.client["t0_epoch"])
            fixed.append(Step(len(fixed) + 1, rate, run, capacity.pipeline(target.stack, t0, t0 + args.rate_s + 15)))
        for count in args.connections:
            wait_drained(target.depth)
            print(f"compare: closed loop, {count} connections for {args.load_s:g} s", flush=True)
            closed.append(drive(out, f"load-{count}", target.port, target.roots, seconds=args.load_s,
                                warmup_s=min(2.0, args.load_s / 4), args=["--connections", str(count)],
                                label=f"{count} connections"))
        steps = capacity.search(args.search, out, target)
    return Measured(design, idle, fixed, closed, steps)


def ratio(value: float, reference: float) -> float:
    return value / reference if reference and reference == reference else float("nan")


def goal_rows(results: dict[str, Measured]) -> list[list[str]]:
    base, project = results.get("inprocess"), results.get("project")
    if base is None or project is None:
        return [["(2) and (3)", "n/a: needs both `inprocess` and `project` in the run", ""]]
    rows = [[f"(2) server CPU per prediction at {mine.rate:.0f} req/s <= in-process",
             f"{cpu_ms(mine)['total']:.2f} vs {cpu_ms(theirs)['total']:.2f} ms",
             "met" if cpu_ms(mine)["total"] <= cpu_ms(theirs)["total"] else "**missed**"]
            for mine, theirs in zip(project.fixed, base.fixed, strict=True)]
    times = ratio(project.capacity, base.capacity)
    return [*rows, [f"(3) capacity at p99 <= {capacity.GOAL_P99_MS:g} ms >= {GOAL_CAPACITY_RATIO:g}x in-process",
                    f"{project.capacity:.0f} vs {base.capacity:.0f} req/s ({times:.2f}x)",
                    "met" if times >= GOAL_CAPACITY_RATIO else "**missed**"]]


def side_by_side(results: dict[str, Measured], args: argparse.Namespace) -> list[list[Any]]:
    base, measured = results.get("inprocess"), list(results.values())
    rows: list[list[Any]] = [
        ["idle server CPU (cores, no request)", *(f"{sum(m.idle.values()):.2f}" + (" (" + ", ".join(
            f"{tree} {value:.2f}" for tree, value in m.idle.items() if value) + ")" if any(m.idle.values()) else "")
            for m in measured)],
        [f"capacity, p99 <= {capacity.GOAL_P99_MS:g} ms (req/s)", *(f"{m.capacity:.0f}" for m in measured)],
        ["capacity / in-process", *(f"{ratio(m.capacity, base.capacity if base else 0):.2f}" for m in measured)]]
    for index, count in enumerate(args.connections):
        rows.append([f"closed loop, {count} connections: valid answers/s (p50 / p99 ms; not answered; cached)",
                     *(f"{run.goodput:.0f} ({ms(run.answered_stats['p50'])} / {ms(run.answered_stats['p99'])}; "
                       f"{not_answered(run.responses)}; {run.responses.details()['cached']})"
                       for run in (m.closed[index] for m in measured))])
    for index, rate in enumerate(args.rates):
        rows.append([f"server CPU ms per prediction at {rate:.0f} req/s (valid answers, p99 ms)",
                     *(f"**{cpu_ms(f)['total']:.2f}** ({f.answers} of {len(f.run.responses)}, {ms(f.stats['p99'])})"
                       + (" above its capacity" if f.stats["p99"] > capacity.GOAL_P99_MS else "")
                       for f in (m.fixed[index] for m in measured))])
        rows.append([f"CPU per prediction / in-process at {rate:.0f} req/s",
                     *(f"{ratio(cpu_ms(m.fixed[index])['total'], cpu_ms(base.fixed[index])['total'] if base else 0):.2f}"
                       for m in measured)])
    return rows


def per_tree(results: dict[str, Measured]) -> list[list[Any]]:
    return [[DESIGNS[m.design], f"{f.rate:.0f}", *(f"{cpu_ms(f)[t]:.3f}" if t in cpu_ms(f) else "-" for t in TREE_COLOURS),
             f"**{cpu_ms(f)['total']:.3f}**", f.answers, not_answered(f.run.responses), ms(f.stats["p99"]),
             f"{f.pipeline['batches']} of {f.pipeline['mean_batch']:.1f}" if f.pipeline["batches"] else "-"]
            for m in results.values() for f in m.fixed]


def as_json(model: dict[str, Any], results: dict[str, Measured], info: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    return {"machine": info, "model": model, "designs": {name: {
        "capacity_per_s": m.capacity,
        "fixed": [{"rate": f.rate, "responses": len(f.run.responses), "valid_answers": f.answers,
                   "statuses": dict(f.run.responses.statuses()), "p99_ms": f.stats["p99"], "cpu_s": f.run.cpu_s,
                   "cpu_ms_per_prediction": cpu_ms(f), "micro_batches": f.pipeline} for f in m.fixed],
        "idle_cores": m.idle,
        "closed": [{"connections": count, "valid_per_s": run.goodput, "p50_ms": run.answered_stats["p50"],
                    "p99_ms": run.answered_stats["p99"], "statuses": dict(run.responses.statuses()),
                    "cached": run.responses.details()["cached"]} for count, run in zip(args.connections, m.closed, strict=True)],
        "steps": [{"rate": s.rate, "achieved": s.achieved, "p99_ms": s.stats["p99"], "errors": s.errors, "held": s.held}
                  for s in m.steps]} for name, m in results.items()}}


def plot(out: Path, results: dict[str, Measured], args: argparse.Namespace) -> None:
    fig, (cpu_ax, cap_ax) = figure(2, "compare: server CPU per prediction, and capacity", height=4.0)
    width, labelled = 0.8 / len(results), set()
    for r_index in range(len(args.rates)):
        for d_index, m in enumerate(results.values()):
            x, bottom, cpu = r_index + d_index * width, 0.0, cpu_ms(m.fixed[r_index])
            for tree, colour in TREE_COLOURS.items():
                if tree in cpu and cpu[tree] == cpu[tree]:
                    cpu_ax.bar(x, cpu[tree], width * 0.9, bottom=bottom, color=colour, label=None if tree in labelled else tree)
                    labelled.add(tree)
                    bottom += cpu[tree]
            cpu_ax.text(x, bottom, f"{m.design}\n{bottom:.2f}", ha="center", va="bottom", fontsize=7)
    cpu_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(args.rates))], [f"{r:.0f} req/s offered" for r in args.rates])
    cpu_ax.set_ylim(0, cpu_ax.get_ylim()[1] * 1.2)  # room for the labels above the bars
    style(cpu_ax, "", "", "server CPU ms per valid answer", legend=None)
    handles = dict(zip(*reversed(cpu_ax.get_legend_handles_labels()), strict=True))
    cpu_ax.legend([handles[t] for t in TREE_COLOURS if t in handles], [t for t in TREE_COLOURS if t in handles], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), title="process tree")
    series = [(f"capacity, p99 <= {capacity.GOAL_P99_MS:g} ms", [m.capacity for m in results.values()])]
    series += [(f"closed loop {count} conn", [m.closed[i].goodput for m in results.values()])
               for i, count in enumerate(args.connections)]
    width = 0.8 / len(series)
    for s_index, (label, values) in enumerate(series):
        xs = [d + s_index * width for d in range(len(results))]
        cap_ax.bar(xs, values, width * 0.9, label=label, hatch="" if s_index == 0 else "//", alpha=1 if s_index == 0 else 0.6)
        for x, value in zip(xs, values, strict=True):
            cap_ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    cap_ax.set_xticks([d + 0.4 - width / 2 for d in range(len(results))], [DESIGNS[name] for name in results])
    cap_ax.set_ylim(0, cap_ax.get_ylim()[1] * 1.1)
    style(cap_ax, "", "", "req/s (valid answers)", legend=None)
    cap_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out / "compare.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("compare")
    model: dict[str, Any] = {}
    results = {design: measure(args, raw, design, model) for design in args.designs}
    plot(out, results, args)
    searches = "\n".join(f"- {DESIGNS[m.design]}: " + ", ".join(
        f"{s.rate:.0f} " + ("held" if s.held else f"missed (p99 {ms(s.stats['p99'])} ms, {s.errors} errors)") for s in m.steps)
        for m in results.values())
    write_summary(out, "compare: this project against the in-process and the one-task-per-request designs", info, __doc__, [
        "## Model\n\n" + markdown_table(["model", "version", "single-row predict", "per row of a 32-row predict"], [[
            f"GradientBoostingRegressor(n_estimators={ESTIMATORS}, max_depth={MAX_DEPTH}) over the demo's {N_FEATURES} "
            f"features", model["version"], f"{model['single_row_us']:.0f} µs", f"{model['per_row_of_32_us']:.1f} µs"]])
        + "\n\nIn-process `LoadedModel.predict` in the scenario's process, median over 300 calls (30 for the batch).",
        goals("compare", ["goal", "figures", "verdict"], goal_rows(results)),
        "## Side by side\n\n" + markdown_table(["", *(DESIGNS[name] for name in results)], side_by_side(results, args)),
        "## Server CPU per prediction, per process tree (ms)\n\n" + markdown_table(
            ["design", "offered/s", *(f"{t} ms" for t in TREE_COLOURS), "total ms", "valid answers", "not answered",
             "p99 ms", "micro-batches (count of mean size)"], per_tree(results))
        + f"\n\nA design offered more than its capacity still answers, late: its figure is the CPU of a saturated server. "
          f"`idle server CPU` is the same trees with no request at all, over {args.idle_s:g} s after the warm-up.",
        f"## Set-up\n\nFixed rates {args.rate_s:g} s each (pool of up to 256 connections); closed loops {args.load_s:g} s "
        f"each, the first {min(2.0, args.load_s / 4):g} s left out; capacity steps of {args.search.step_s:g} s from "
        f"{args.search.start_rate:g} req/s, x{args.search.factor:g}, {args.search.bisect} bisection step(s):\n\n" + searches],
        {"compare.png": "CPU per prediction by process tree at each fixed rate; capacity and closed-loop answers per design",
         "results.json": "every figure above"})
    (out / "results.json").write_text(json.dumps(as_json(model, results, info, args), indent=2, default=float))
    # Functional failure: an answer that breaks the contract (an error status with the error body is a figure).
    runs = [f.run for m in results.values() for f in m.fixed] + [run for m in results.values() for run in m.closed]
    return 1 if sum(r.responses.broken() for r in runs) + sum(s.responses.broken() for m in results.values() for s in m.steps) else 0


if __name__ == "__main__":
    raise SystemExit(main())
