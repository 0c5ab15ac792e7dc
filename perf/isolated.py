"""Scenario `isolated`: /predict alone with Locust (`PredictOnlyUser`, no wait) at 200 and then 400 users on one
stack, beside the echo baseline. No goal: whether more users buy throughput or only queueing.
"""

from __future__ import annotations

from perf import locust_runs
from perf.results import begin, counts, markdown_table, ms, write_summary
from perf.runs import wait_drained


def main(argv: list[str] | None = None) -> int:
    parser = locust_runs.profile_parser("isolated", __doc__, run_time_s=120.0)
    parser.add_argument("--users", default="200,400", help="comma-separated user counts, one run each")
    args = locust_runs.profile_args(parser.parse_args(argv))
    levels = [int(n) for n in args.users.split(",") if n.strip()]
    if not levels or min(levels) < 1:
        parser.error("--users needs positive user counts")
    info, out, raw = begin("isolated")
    runs = []
    with locust_runs.profile_stack(args, raw) as (stack, echo):
        for users in levels:
            wait_drained(stack.queue_probe().depth)
            runs.append(locust_runs.run_locust(stack, out, f"isolated-{users}", f"isolated /predict: {users} Locust users",
                                   "PredictOnlyUser", users=users, spawn_rate=args.spawn_rate, run_time_s=args.run_time_s,
                                   extra=args.locust_extra))
    rows, files = [], {}
    for run in runs:
        files.update(locust_runs.write_run(out, run))
        s, rate = run.stats("/predict"), run.throughput("/predict")
        rows.append([run.name.removeprefix("isolated-"), f"{rate:.0f}", f"{rate / max(echo.throughput, 1e-9):.2f}",
                     ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), counts(run.endpoints["/predict"].statuses()),
                     len(run.failures("/predict")), run.cores.get("client (Locust)", "?"), run.cores.get("api", "?")])
        print(f"isolated: {rows[-1][0]} users: {rows[-1][1]}/s ({rows[-1][2]}x echo), p50 {rows[-1][3]} p99 {rows[-1][5]} "
              f"ms; statuses {rows[-1][6]}; failures {rows[-1][7]}", flush=True)
    write_summary(out, f"isolated: /predict alone with Locust at {' and '.join(map(str, levels))} users", info, __doc__, [
        locust_runs.profile_setup(args, runs[0], ", ".join(map(str, levels)), echo),
        "## Results\n\n" + markdown_table(["users", "/predict responses/s", "/ echo", "p50 ms", "p95 ms", "p99 ms",
                                           "statuses", "failures", "client cores", "API cores"], rows),
        *(locust_runs.run_section(run) + f"\n- {locust_runs.echo_ratio_text(run, echo)}." for run in runs)], files)
    return 1 if any(run.broken() for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
