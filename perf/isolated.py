"""Scenario `isolated`: /predict alone with Locust (`PredictOnlyUser`) at 200 and then 400 users.

Each user sends its next POST /predict as soon as the previous answer came (no wait): a closed loop of
200, then 400 concurrent requests, `--run-time-s` each (120 s; 20 s with `--quick`), users spawned at
`--spawn-rate` a second, on one stack (one Celery worker process with QUEUE_WORKERS=2, the API with its
defaults: HTTP_THREADS 64, micro-batching on, QUEUE_MAXSIZE 512); the queue is left to empty between
the runs. The bare-waitress echo baseline (`perf.loadgen`, closed loop over 64 connections, as in the
`http` scenario) runs first on the same machine, for the ratios.

What it shows: throughput and latency when only /predict runs, at the original profile's concurrency and
at twice it; whether more users buy throughput or only queueing (Little's law: latency ~ users /
throughput once the API is saturated); what the API sheds (429/503 count as successes in Locust when
their body and Retry-After are right) and what fails. No timing goal is attached to this profile.
Figures cover each whole run, ramp-up included, as Locust reports them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from perf.capacity import wait_drained
from perf.common import (
    begin,
    machine_markdown,
    markdown_table,
    ms,
)
from perf.http_bench import Run
from perf.locust_runs import (
    LoadRun,
    add_profile_options,
    counts,
    echo_ratio_text,
    files_section,
    plot_run,
    profile_defaults,
    profile_setup,
    profile_stack,
    run_locust,
    run_section,
    write_run_csvs,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario isolated", description=__doc__.splitlines()[0])
    add_profile_options(parser, run_time_s=120.0)
    parser.add_argument("--users", default="200,400", help="comma-separated user counts, one run each")
    args = profile_defaults(parser.parse_args(argv))
    args.levels = [int(n) for n in args.users.split(",") if n.strip()]
    if not args.levels or min(args.levels) < 1:
        parser.error("--users needs positive user counts")
    return args


def comparison(runs: list[LoadRun], echo: Run) -> list[list[Any]]:
    rows = []
    for run in runs:
        s, predict = run.stats("/predict"), run.endpoints["/predict"]
        rows.append([run.name.removeprefix("isolated-"), f"{run.throughput('/predict'):.0f}",
                     f"{run.throughput('/predict') / max(echo.throughput, 1e-9):.2f}", ms(s["p50"]), ms(s["p95"]),
                     ms(s["p99"]), counts(predict.statuses()), len(run.failures("/predict")),
                     run.cores.get("client (Locust)", "?"), run.cores.get("api", "?")])
    return rows


def summary(info: dict[str, Any], args: argparse.Namespace, runs: list[LoadRun], echo: Run, paths: list[Path]) -> str:
    return "\n\n".join([
        f"# isolated: /predict alone with Locust at {' and '.join(map(str, args.levels))} users ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        profile_setup(args, runs[0], ", ".join(map(str, args.levels)), echo),
        "## Results\n\n" + markdown_table(
            ["users", "/predict responses/s", "/ echo", "p50 ms", "p95 ms", "p99 ms", "statuses", "failures",
             "client cores", "API cores"], comparison(runs, echo)),
        *(run_section(run) + f"\n- {echo_ratio_text(run, echo)}." for run in runs),
        "Latency is Locust's: from sending the request to the last byte of the answer. Locust's own percentiles "
        "are rounded; the others are exact, from every response. `cores used` is CPU time over wall time (1.0 = "
        "one core busy); on 2 cores the client's share is taken from the server.",
        "## Machine\n\n" + machine_markdown(info),
        files_section(paths, runs),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("isolated")
    runs = []
    with profile_stack(args, raw) as (stack, echo):
        for users in args.levels:
            wait_drained(stack)
            runs.append(run_locust(stack, out, f"isolated-{users}", f"isolated /predict: {users} Locust users",
                                   "PredictOnlyUser", users=users, spawn_rate=args.spawn_rate,
                                   run_time_s=args.run_time_s, extra=args.locust_extra))
    paths = []
    for run in runs:
        write_run_csvs(out, run)
        paths += plot_run(out, run)
    (out / "summary.md").write_text(summary(info, args, runs, echo, paths))
    for row in comparison(runs, echo):
        print(f"isolated: {row[0]} users: {row[1]}/s ({row[2]}x echo), p50 {row[3]} p95 {row[4]} p99 {row[5]} ms; "
              f"statuses {row[6]}; failures {row[7]}; client cores {row[8]}", flush=True)
    print(f"isolated: summary in {out / 'summary.md'}", flush=True)
    return 1 if any(run.broken() for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
