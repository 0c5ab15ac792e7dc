"""`python -m perf.budget [--rate R] [--seconds S] [--design project|inprocess] [--env K=V ...]`: where a
/predict's CPU goes.

Serves /predict as `compare` does (same stack, same comparison model), offers it `--rate` requests a second
(open loop) for `--seconds`, and meanwhile reads each thread's CPU time from /proc (named by the thread's
name, grouped by process) and records the API and the worker with py-spy (`--py-spy`: all threads, and
with `--gil` only the thread holding the interpreter lock). Prints microseconds of CPU per valid answer
by process and thread, and leaves py-spy's flame graphs (SVG) and raw folded stacks in the results folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from perf import compare
from perf.common import Responses, begin, run_client

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    found, frontier = [root], [root]
    while frontier:
        frontier = [child for pid in frontier for child in children.get(pid, [])]
        found += frontier
    return found


def threads(roots: dict[str, int]) -> dict[tuple[str, str], float]:
    """CPU seconds so far per (process tree, thread name)."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for name, root in roots.items():
        for pid in tree(root):
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError, IndexError):
                    stat = (task / "stat").read_text()
                    thread = stat[stat.index("(") + 1:stat.rindex(")")]
                    fields = stat.rsplit(")", 1)[1].split()
                    label = thread if pid == root else f"child: {thread}"
                    totals[(name, label)] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--design", default="project")
    parser.add_argument("--py-spy", choices=["http server", "worker"], help="record this process tree with py-spy")
    parser.add_argument("--gil", action="store_true", help="py-spy samples only the thread holding the GIL")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    _info, out, raw = begin("budget" + (f"-{args.label}" if args.label else ""))
    with compare.serving(args.design, raw) as (target, _stack):
        compare.warm_up(target.port)
        spies = []
        if args.py_spy:
            spy = str(Path(sys.executable).parent / "py-spy")
            stem = out / f"{args.py_spy.replace(' ', '-')}{'-gil' if args.gil else ''}"
            spies.append(subprocess.Popen(
                [spy, "record", "-p", str(target.roots[args.py_spy]), "-d", str(int(args.seconds)), "-r", "100", "-s",
                 "-t", "-f", "raw", "-o", f"{stem}.txt", *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        before = threads(target.roots)
        run_client("paced", target.port, raw / "budget.csv", raw, timeout_s=args.seconds + 60, args=compare.load_args(
            "--rate", f"{args.rate:g}", "--connections", "256", "--preopen", "32", "--duration-s", str(args.seconds),
            "--grace-s", "10"))
        after = threads(target.roots)
        for spy_process in spies:
            spy_process.wait(60)
    answers = int(Responses.read(raw / "budget.csv").valid.sum())
    per: dict[tuple[str, str], float] = {key: (after.get(key, 0.0) - before.get(key, 0.0)) * 1e6 / max(answers, 1)
                                         for key in after}
    lines = [f"{args.design} at {args.rate:g} req/s for {args.seconds:g} s: {answers} valid answers; "
             "CPU per answer, microseconds"]
    for process in sorted({key[0] for key in per}):
        rows = sorted(((label, us) for (name, label), us in per.items() if name == process and us >= 1), key=lambda r: -r[1])
        lines.append(f"  {process}: {sum(us for _, us in rows):.0f}")
        lines += [f"    {label}: {us:.0f}" for label, us in rows]
    lines.append(f"  total: {sum(per.values()):.0f}")
    text = "\n".join(lines)
    print(text)
    (out / "budget.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
