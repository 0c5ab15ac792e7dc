"""`python -m perf.budget [--rate R] [--seconds S] [--design project|inprocess|celery] [--py-spy TREE [--gil]]`: where
a /predict's CPU goes, by process and thread, in budget.txt (what it runs: perf/README.md)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from perf import compare
from perf.measure import Responses, thread_cpu_s
from perf.results import begin
from perf.runs import run_client, warm_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.budget", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--design", choices=list(compare.DESIGNS), default="project")
    parser.add_argument("--py-spy", choices=["http server", "worker"], help="record this process tree with py-spy")
    parser.add_argument("--gil", action="store_true", help="py-spy samples only the thread holding the GIL")
    parser.add_argument("--label", default="", help="results in ...-budget-<label>/")
    args = parser.parse_args(argv)
    _info, out, raw = begin("budget" + (f"-{args.label}" if args.label else ""))
    with compare.serving(args.design, raw) as (target, _stack):
        warm_up(f"http://127.0.0.1:{target.port}")
        spy = None
        if args.py_spy:
            stem = out / f"{args.py_spy.replace(' ', '-')}{'-gil' if args.gil else ''}"
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(target.roots[args.py_spy]),
                                    "-d", str(int(args.seconds)), "-r", "100", "-s", "-t", "-f", "raw", "-o", f"{stem}.txt",
                                    *(["--gil"] if args.gil else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = thread_cpu_s(target.roots)
        run_client("paced", target.port, raw / "budget.csv", timeout_s=args.seconds + 60, args=[
            "--rate", f"{args.rate:g}", "--connections", "256", "--preopen", "32", "--duration-s", str(args.seconds),
            "--grace-s", "10"])
        after = thread_cpu_s(target.roots)
        if spy is not None:
            spy.wait(60)
    answers = int(Responses.read(raw / "budget.csv").ok.sum())
    per = {key: (after[key] - before.get(key, 0.0)) * 1e6 / max(answers, 1) for key in after}
    lines = [f"{args.design} at {args.rate:g} req/s for {args.seconds:g} s: {answers} valid answers; CPU per answer, "
             "microseconds"]
    for process in sorted({tree for tree, _ in per}):
        rows = sorted(((label, us) for (tree, label), us in per.items() if tree == process and us >= 1), key=lambda r: -r[1])
        lines += [f"  {process}: {sum(us for _, us in rows):.0f}", *(f"    {label}: {us:.0f}" for label, us in rows)]
    lines.append(f"  total: {sum(per.values()):.0f}")
    print("\n".join(lines))
    (out / "budget.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
