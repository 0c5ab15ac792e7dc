"""Scenario `original`: the original validation profile (`OriginalUser`: 200 users, 80 % /predict, 10 % /healthz,
10 % download) with Locust, beside light probes of its own and the echo baseline; then the same profile against a
Flask app doing nothing, for reference. Goals: no failures, /predict p95 <= 50 ms, /healthz p99 <= 20 ms.
"""

from __future__ import annotations

from typing import Any

from perf import locust_runs
from perf.locust_runs import LoadRun
from perf.measure import Responses, latency_stats
from perf.results import begin, counts, goals, markdown_table, ms, verdict, write_summary
from perf.runs import probing

PREDICT_P95_GOAL_MS = 50.0
HEALTHZ_P99_GOAL_MS = 20.0
PROBES = {"healthz-probe": ("GET /healthz", "fresh connection", []),
          "predict-probe": ("POST /predict", "kept-alive connection", ["--keepalive"])}


def goal_rows(run: LoadRun) -> list[list[Any]]:
    total = sum(len(r) for r in run.endpoints.values())
    failed = sum(len(run.failures(name)) for name in run.endpoints)
    predict, healthz = run.stats("/predict"), run.stats("/healthz")
    return [
        ["no failures", "17 % of requests", f"{failed} of {total} ({100 * failed / max(total, 1):.1f} %)", verdict(failed, 0)],
        [f"/predict p95 <= {PREDICT_P95_GOAL_MS:g} ms", "4.4 s", f"{ms(predict['p95'])} ms",
         verdict(predict["p95"], PREDICT_P95_GOAL_MS)],
        [f"/healthz p99 <= {HEALTHZ_P99_GOAL_MS:g} ms", "median 11.6 s",
         f"p99 {ms(healthz['p99'])} ms (median {ms(healthz['p50'])} ms)", verdict(healthz["p99"], HEALTHZ_P99_GOAL_MS)],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = locust_runs.profile_parser("original", __doc__, run_time_s=60.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the run against the Flask echo")
    args = locust_runs.profile_args(parser.parse_args(argv))
    info, out, raw = begin("original")
    probes = {name: ["--path", request.split()[1], "--interval-ms", "20", "--duration-s", str(args.run_time_s), *extra]
              for name, (request, _, extra) in PROBES.items()}
    with locust_runs.profile_stack(args, raw) as (stack, echo), probing(stack.port, raw, probes) as files:
        run = locust_runs.run_locust(stack, out, "original", f"original profile: {args.users} Locust users", "OriginalUser",
                         users=args.users, spawn_rate=args.spawn_rate, run_time_s=args.run_time_s, extra=args.locust_extra)
    reference = locust_runs.flask_echo_reference(out, users=args.users, spawn_rate=args.spawn_rate, run_time_s=args.run_time_s,
                                     threads=args.threads) if args.reference else None
    probed = {name: Responses.read(path) for name, path in files.items()}
    files = locust_runs.write_run(out, run, {"/predict": PREDICT_P95_GOAL_MS, "/healthz": HEALTHZ_P99_GOAL_MS})
    rows = []
    for name, responses in probed.items():
        request, how, _ = PROBES[name]
        s, theirs = latency_stats(responses.latency_ms), run.stats(request.split()[1])
        rows.append([request, how, s["count"], *(ms(s[k]) for k in ("p50", "p95", "p99", "max")),
                     counts(responses.statuses()), responses.invalid().total(),
                     " / ".join(ms(theirs[k]) for k in ("p50", "p95", "p99"))])
        print(f"original: {name} (a light client beside Locust): p50 {ms(s['p50'])}, p99 {ms(s['p99'])} ms", flush=True)
    sections = [
        locust_runs.profile_setup(args, run, str(args.users), echo),
        goals("original", ["goal", "original system", "this run", "verdict"], goal_rows(run)),
        "## Results\n\n" + locust_runs.run_section(run) + f"\n- {locust_runs.echo_ratio_text(run, echo)}.",
        "Latency is Locust's, from sending the request to the last byte of the answer; Locust's own percentiles "
        "(last column) are rounded, the others exact, from every response.",
        "### The same run, seen by light clients of their own\n\n" + markdown_table(
            ["request", "how", "responses", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses", "invalid",
             "Locust, same endpoint: p50 / p95 / p99 ms"], rows)]
    if reference is not None:
        s = latency_stats(reference.latency_ms)
        rate = len(reference) / args.run_time_s
        sections.append(
            f"## Reference: a Flask app doing nothing, same profile\n\n`FlaskEchoUser`, {args.users} users, spawn "
            f"{args.spawn_rate:g}/s, {args.run_time_s:g} s, against `perf.echo --flask` ({args.threads} threads), after "
            "the stack stopped.\n\n" + markdown_table(
                ["responses/s", "p50 ms", "p95 ms", "p99 ms", "valid echoes", f"p95 <= {PREDICT_P95_GOAL_MS:g} ms"],
                [[f"{rate:.0f}", ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), f"{int(reference.valid.sum())} of {len(reference)}",
                  verdict(s["p95"], PREDICT_P95_GOAL_MS)]]))
        print(f"original: reference, a Flask app doing nothing: {rate:.0f} responses/s, p95 {ms(s['p95'])} ms", flush=True)
    write_summary(out, "original: the original validation profile with Locust", info, __doc__, sections, files)
    print(f"original: {locust_runs.echo_ratio_text(run, echo)}; client cores {run.cores.get('client (Locust)')}", flush=True)
    broken_reference = int((~reference.valid).sum()) if reference is not None else 0
    return 1 if run.broken() or broken_reference or sum(r.invalid().total() for r in probed.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
