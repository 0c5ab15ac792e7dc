"""Scenario `original`: the original validation profile, run with Locust against a stack of its own.

`OriginalUser` (perf/locustfile.py, FastHttpUser): 200 users spawned at 50 a second for 60 s, each
choosing its next task 0-100 ms after the previous answer: 80 % POST /predict, 10 % GET /healthz, 10 %
GET /download_processed/demo/features.parquet. The stack: one Celery worker process with
QUEUE_WORKERS=2 and the API with its defaults (HTTP_THREADS 64, micro-batching on, QUEUE_MAXSIZE 512).
The bare-waitress echo baseline (`perf.loadgen`, closed loop over 64 connections, as in the `http`
scenario) runs first on the same machine, for the throughput ratio. Beside Locust, two light clients
of their own probe /healthz (a fresh connection each time) and /predict: the same run seen without
Locust's own delays (its one event loop shares the two cores with the stack).

Goals: no failures, /predict p95 <= 50 ms, /healthz p99 <= 20 ms. The original system, same profile:
/predict p95 4.4 s, 17 % of requests failed, /healthz median 11.6 s. A failure is what Locust counts
as one: a 429 or 503 with the contract's error body and an integer Retry-After is load shedding and
counts as a success (listed by status code all the same); any other status, a transport error or an
invalid body fails. Figures cover the whole run, ramp-up included, as Locust reports them.

Reference, after the stack has stopped: the same users and pacing (`FlaskEchoUser`) against a one-route
Flask app on waitress that echoes the request body and does nothing else (`perf.echo --flask`, the
same HTTP_THREADS). What it gets on this machine bounds what any Flask view, /predict included, can get
from this profile here; `--no-reference` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from perf.common import (
    Responses,
    Stack,
    begin,
    latency_stats,
    machine_markdown,
    markdown_table,
    ms,
    probing,
    verdict,
)
from perf.http_bench import Run
from perf.locust_runs import (
    LoadRun,
    add_profile_options,
    echo_ratio_text,
    files_section,
    plot_run,
    profile_defaults,
    profile_setup,
    profile_stack,
    run_flask_echo_reference,
    run_locust,
    run_section,
    write_run_csvs,
)

PREDICT_P95_GOAL_MS = 50.0
HEALTHZ_P99_GOAL_MS = 20.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario original", description=__doc__.splitlines()[0])
    add_profile_options(parser, run_time_s=60.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the run against the Flask echo")
    return profile_defaults(parser.parse_args(argv))


def goals(run: LoadRun) -> list[list[Any]]:
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


#: Light clients of their own beside Locust, each one request at a time, at most one every PROBE_INTERVAL_MS:
#: what the API answers as seen from outside Locust, whose single event loop shares the two cores with the stack it measures.
PROBE_INTERVAL_MS = 20
PROBES = {  # name: (method, path, kind, extra arguments)
    "healthz-probe": ("GET", "/healthz", "healthz", []),  # a fresh connection each time, as a kubelet probes
    "predict-probe": ("POST", "/predict", "predict", ["--keepalive"]),
}


def probes(stack: Stack, raw: Path, run_time_s: float, n_features: int) -> contextlib.AbstractContextManager[dict[str, Path]]:
    """`perf.loadgen probe` for each of PROBES during the block (`run_time_s`); their responses' files."""
    return probing(stack.port, raw, {
        name: ["--method", method, "--path", path, "--kind", kind, "--n-features", str(n_features),
               "--interval-ms", str(PROBE_INTERVAL_MS), "--duration-s", str(run_time_s), *extra]
        for name, (method, path, kind, extra) in PROBES.items()}, stack.env)


def probe_section(probed: dict[str, tuple[Responses, dict[str, float]]], run: LoadRun) -> str:
    rows = []
    for name, (responses, stats) in probed.items():
        method, path, _, extra = PROBES[name]
        locust = run.stats(path)
        rows.append([f"{method} {path}", "fresh connection" if not extra else "kept-alive connection",
                     stats["count"], ms(stats["p50"]), ms(stats["p95"]), ms(stats["p99"]), ms(stats["max"]),
                     ", ".join(f"{k}: {v}" for k, v in sorted(responses.statuses().items())),
                     responses.invalid().total(),
                     f"{ms(locust['p50'])} / {ms(locust['p95'])} / {ms(locust['p99'])}"])
    return ("### The same run, seen by light clients of their own\n\n"
            f"Beside Locust, `perf.loadgen probe` sent requests to each endpoint below, one at a time and at most one "
            f"every {PROBE_INTERVAL_MS} ms, from a process of its own, for the run's length. Locust's latency includes the time its one event loop, "
            "busy with every user and sharing the two cores with the stack, takes to send and to read; these clients "
            "do almost nothing else, so the difference is mostly the client's and not the API's. The goals above "
            "stay on Locust's figures.\n\n"
            + markdown_table(["request", "how", "responses", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses",
                              "invalid", "Locust, same endpoint: p50 / p95 / p99 ms"], rows))


def reference_figures(args: argparse.Namespace, reference: Responses) -> tuple[float, dict[str, float]]:
    """The Flask-echo reference run's responses per second and latency percentiles."""
    return len(reference) / args.run_time_s, latency_stats(reference.latency_ms)


def reference_section(args: argparse.Namespace, reference: Responses | None) -> list[str]:
    if reference is None:
        return []
    rate, stats = reference_figures(args, reference)
    ok = int(reference.valid.sum())
    rows = [[f"{rate:.0f}", ms(stats["p50"]), ms(stats["p95"]), ms(stats["p99"]),
             f"{ok} of {len(reference)}", verdict(stats["p95"], PREDICT_P95_GOAL_MS)]]
    return ["## Reference: a Flask app doing nothing, same profile\n\n"
            f"`FlaskEchoUser`, {args.users} users, spawn {args.spawn_rate:g}/s, {args.run_time_s:g} s, against "
            f"`perf.echo --flask` ({args.threads} threads), after the stack stopped.\n\n"
            + markdown_table(["responses/s", "p50 ms", "p95 ms", "p99 ms", "valid echoes",
                              f"p95 <= {PREDICT_P95_GOAL_MS:g} ms"], rows)]


def summary(info: dict[str, Any], args: argparse.Namespace, run: LoadRun, echo: Run, paths: list[Path],
            probed: dict[str, tuple[Responses, dict[str, float]]], reference: Responses | None) -> str:
    return "\n\n".join([
        f"# original: the original validation profile with Locust ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        profile_setup(args, run, str(args.users), echo),
        "## Goals\n\n" + markdown_table(["goal", "original system", "this run", "verdict"], goals(run)),
        "## Results\n\n" + run_section(run) + f"\n- {echo_ratio_text(run, echo)}.",
        "Latency is Locust's: from sending the request to the last byte of the answer. Locust's own percentiles "
        "(last column) are rounded; the others are exact, from every response. `cores used` is CPU time over wall "
        "time (1.0 = one core busy); on 2 cores the client's share is taken from the server.",
        probe_section(probed, run),
        *reference_section(args, reference),
        "## Machine\n\n" + machine_markdown(info),
        files_section(paths, [run]),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, out, raw = begin("original")
    with profile_stack(args, raw) as (stack, echo), \
            probes(stack, raw, args.run_time_s, int(stack.model()["n_features"])) as probe_files:
        run = run_locust(stack, out, "original", f"original profile: {args.users} Locust users", "OriginalUser",
                         users=args.users, spawn_rate=args.spawn_rate, run_time_s=args.run_time_s,
                         extra=args.locust_extra)
    reference = run_flask_echo_reference(out, users=args.users, spawn_rate=args.spawn_rate, run_time_s=args.run_time_s,
                                         threads=args.threads) if args.reference else None
    probed: dict[str, tuple[Responses, dict[str, float]]] = {}
    for name, path in probe_files.items():
        responses = Responses.read(path)
        probed[name] = (responses, latency_stats(responses.latency_ms))
    write_run_csvs(out, run)
    paths = plot_run(out, run, {"/predict": PREDICT_P95_GOAL_MS, "/healthz": HEALTHZ_P99_GOAL_MS})
    (out / "summary.md").write_text(summary(info, args, run, echo, paths, probed, reference))
    for goal, _, measured, met in goals(run):
        print(f"original: {goal}: {measured}: {met.strip('*')}", flush=True)
    if reference is not None:
        rate, stats = reference_figures(args, reference)
        print(f"original: reference, a Flask app doing nothing: {rate:.0f} responses/s, p95 {ms(stats['p95'])} ms",
              flush=True)
    for name, (_, stats) in probed.items():
        print(f"original: {name} (a light client beside Locust): p50 {ms(stats['p50'])}, p95 {ms(stats['p95'])}, "
              f"p99 {ms(stats['p99'])} ms", flush=True)
    print(f"original: {echo_ratio_text(run, echo)}; client cores {run.cores.get('client (Locust)')}; "
          f"summary in {out / 'summary.md'}", flush=True)
    broken_reference = int((~reference.valid).sum()) if reference is not None else 0
    broken_probes = sum(responses.invalid().total() for responses, _ in probed.values())
    return 1 if run.broken() or broken_reference or broken_probes else 0


if __name__ == "__main__":
    raise SystemExit(main())
