"""`python -m perf [--scenario NAME[,NAME...]] [--quick] [--list] [scenario options]`: run load scenarios.

`make perf` runs the default set; `make perf SCENARIO=http` passes `--scenario http`. Each scenario is a module
with `main(argv) -> int` that starts the stack it needs, writes its report to perf/results/<date>-<host>-<scenario>/
and stops everything it started. Options the runner does not know (e.g. `--duration-s 30`) go to every selected
scenario.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

SCENARIOS = {
    "shed": "perf.shed",
    "http": "perf.http_bench",
    "echo": "perf.echo",
    "kafka-burst": "perf.kafka_burst",
    "microbatch": "perf.microbatch",
    "capacity": "perf.capacity",
    "download": "perf.download",
    "original": "perf.original",
    "isolated": "perf.isolated",
    "overload": "perf.overload",
    "compare": "perf.compare",
}
#: What `make perf` runs, in this order: about 30 minutes on 2 cores. `isolated` (two 2-minute Locust runs) and
#: `echo` (part of `http`) run when named.
DEFAULT = ("shed", "http", "kafka-burst", "microbatch", "capacity", "download", "original", "overload", "compare")


def run_one(name: str, argv: list[str]) -> int:
    started = time.monotonic()
    print(f"== perf: {name} ==", flush=True)
    try:
        code = importlib.import_module(SCENARIOS[name]).main(argv)
    except SystemExit as stop:  # argparse in the scenario
        code = stop.code if isinstance(stop.code, int) else 2
    except Exception:
        traceback.print_exc()
        code = 1
    print(f"== perf: {name} {'ok' if code == 0 else f'failed ({code})'} in {time.monotonic() - started:.0f} s ==", flush=True)
    return int(code or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", default=[],
                        help=f"one of {', '.join(SCENARIOS)} (repeat or comma-separate; default: {' then '.join(DEFAULT)})")
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier figures): for a first look")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args, passthrough = parser.parse_known_args(argv)
    if args.list:
        for name, module in SCENARIOS.items():
            print(f"{name:12} {module}{'' if name in DEFAULT else '  (when named)'}")
        return 0
    requested = [name.strip() for item in args.scenario for name in item.split(",") if name.strip()]
    if unknown := [name for name in requested if name not in SCENARIOS]:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = {}
    try:
        for name in requested or DEFAULT:
            results[name] = run_one(name, (["--quick"] if args.quick else []) + passthrough)
    except KeyboardInterrupt:
        print("perf: interrupted; the running scenario stopped what it had started", file=sys.stderr, flush=True)
        return 130
    print("perf: " + ", ".join(f"{name} {'ok' if code == 0 else 'FAILED'}" for name, code in results.items()), flush=True)
    return 0 if all(code == 0 for code in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
