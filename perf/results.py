"""Where a scenario's report goes and how it is written: perf/results/<date>-<host>-<scenario>/ with summary.md,
CSV files and plots (matplotlib, Agg), and the machine's facts for the summary."""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from devtools.processes import ROOT  # noqa: E402
from perf.measure import PERCENTILES  # noqa: E402
from perf.stack import perf_env, stop_on_sigterm  # noqa: E402

RESULTS_ROOT = ROOT / "perf" / "results"
STATUS_COLOURS = {"200": "tab:green", "429": "tab:orange", "503": "tab:purple", "504": "tab:red",
                  "transport error": "black"}


def host_label() -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-") or "host"


def results_dir(scenario: str, *, fresh: bool = True) -> Path:
    """perf/results/<YYYY-MM-DD>-<host>-<scenario>/ with raw/ inside; `fresh`: a previous run's files removed
    (a scenario that adds runs to the day's folder, as kafka-burst does, keeps them)."""
    path = RESULTS_ROOT / f"{datetime.date.today().isoformat()}-{host_label()}-{scenario}"
    raw = path / "raw"
    if fresh:
        shutil.rmtree(raw, ignore_errors=True)
        for stale in [*path.glob("*.png"), *path.glob("*.csv"), *path.glob("*.json"), *path.glob("summary.md")]:
            stale.unlink()
    raw.mkdir(parents=True, exist_ok=True)
    return path


def begin(scenario: str, *, fresh: bool = True) -> tuple[dict[str, Any], Path, Path]:
    """A scenario's start: SIGTERM unwinds like Ctrl-C, the machine's facts (load average now), the results
    folder and its raw/ subfolder."""
    stop_on_sigterm()
    info = machine_info()
    out = results_dir(scenario, fresh=fresh)
    print(f"{scenario}: results in {out}", flush=True)
    return info, out, out / "raw"


def machine_info() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "unknown"

    mem_kib = first("/proc/meminfo", "MemTotal").split()[0]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": socket.gethostname(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "memory": f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib.isdigit() else "unknown",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "git": commit or "unknown",
        "load_avg_at_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "settings_from_PERF_ENV": " ".join(f"{k}={v}" for k, v in perf_env().items()) or "none",
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def table(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table written to the CSV file `path` (emphasis left out) and returned as markdown for the summary."""
    write_csv(path, headers, [[str(cell).replace("**", "") for cell in row] for row in rows])
    return markdown_table(headers, rows)


def write_summary(out: Path, title: str, info: Mapping[str, Any], doc: str | None, sections: Sequence[str],
                  files: Mapping[str, str]) -> Path:
    """summary.md: the title with the date, the scenario's description (its module docstring), the sections, the
    machine (load average at the end added) and what each file holds."""
    rows = [[key.replace("_", " "), str(value)] for key, value in info.items()]
    rows.append(["load avg at end", " / ".join(f"{x:.2f}" for x in os.getloadavg())])
    listing = [f"- `{name}`: {what}" for name, what in files.items()]
    listing.append("- `raw/` (not committed): every response, client stats, the log of every process")
    parts = [f"# {title} ({info['date']})", (doc or "").strip() + "\n\nHow it measures: [perf/README.md](../../README.md).", *sections,
             "## Machine\n\n" + markdown_table(["machine", ""], rows), "## Files\n\n" + "\n".join(listing)]
    path = out / "summary.md"
    path.write_text("\n\n".join(part for part in parts if part) + "\n")
    print(f"{out.name.split('-', 4)[-1]}: summary in {path}", flush=True)
    return path


def setup(args: Any, settings: Mapping[str, str] | None = None) -> str:
    """The set-up: the scenario's options (given or default) and the settings its stack was started with."""
    rows = [[f"`--{key.replace('_', '-')}`", ", ".join(map(str, value)) if isinstance(value, list) else value]
            for key, value in vars(args).items() if key != "quick" and isinstance(value, int | float | str | list) and value != []]
    return "## Set-up\n\n" + markdown_table(["option, or setting of the stack", "value"],
                                              rows + [[f"`{key}`", value] for key, value in (settings or {}).items()])


def goals(scenario: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The goals table of a summary, each goal also printed (they are reported, never the exit code)."""
    for row in rows:
        print(f"{scenario}: " + ": ".join(str(cell).replace("**", "") for cell in row), flush=True)
    return "## Goals\n\n" + markdown_table(headers, rows)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


STAT_COLUMNS = [*(f"p{p}_ms" for p in PERCENTILES), "max_ms"]


def stat_cells(stats: Mapping[str, float]) -> list[float]:
    """The STAT_COLUMNS of `perf.measure.latency_stats`, for a CSV row."""
    return [round(stats[key], 3) for key in (*(f"p{p}" for p in PERCENTILES), "max")]


def per_second_csv(path: Path, series: Mapping[str, Sequence[Mapping[str, Any]]], key: str = "run") -> Path:
    """Per-second rows (`perf.measure.Responses.per_second`) of each named series, one CSV in long form."""
    return write_csv(path, [key, "second", "responses", *STAT_COLUMNS, "statuses"],
                     [[name, row["second"], row["responses"], *(row[c] for c in STAT_COLUMNS),
                       " ".join(f"{code}:{n}" for code, n in sorted(row["statuses"].items()))]
                      for name, rows in series.items() for row in rows])


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "**missed**"


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def counts(counter: Mapping[Any, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items())) or "none"


def cores_text(cores: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in cores.items())


# -- plots ---------------------------------------------------------------------------------------------


def figure(rows: int, title: str, height: float = 3.2) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(rows, 1, figsize=(10, height * rows), squeeze=False, sharex=False)
    fig.suptitle(title)
    return fig, [row[0] for row in axes]


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def style(ax: Any, title: str = "", xlabel: str = "second of the run", ylabel: str = "", *, log: str = "",
          legend: str | None = "upper right", below: int = 0, bottom: float | None = None) -> None:
    """Labels, a light grid, log axes (`log` "x", "y" or "xy"), and the legend at `legend`, or below the plot
    in `below` columns."""
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for axis in log:
        getattr(ax, f"set_{axis}scale")("log")
    if bottom is not None:
        ax.set_ylim(bottom=bottom)
    ax.grid(alpha=0.3, which="both" if log else "major")
    if below:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=below)
    elif legend:
        ax.legend(fontsize=8, loc=legend)


def plot_percentiles(ax: Any, per_second: Sequence[Mapping[str, Any]], label: str, goal_ms: float | None = None,
                     title: str = "") -> None:
    seconds = [row["second"] for row in per_second]
    for p, line in zip(PERCENTILES, ("-", "--", ":"), strict=True):
        ax.plot(seconds, [row[f"p{p}_ms"] for row in per_second], line, label=f"{label} p{p}")
    if goal_ms is not None:
        ax.axhline(goal_ms, color="red", linewidth=0.8, label=f"goal {goal_ms:g} ms")
    style(ax, title, ylabel="latency (ms)", log="y")


def plot_throughput(ax: Any, runs: Mapping[str, Any], warmup_s: float, title: str, legend: str = "lower right") -> None:
    """Responses per second of each run (`perf.runs.Run`, by label), the end of the warm-up marked."""
    for label, run in runs.items():
        ax.plot([r["second"] for r in run.per_second], [r["responses"] for r in run.per_second], marker="o", markersize=3,
                label=f"{label}: {run.throughput:.0f}/s over the window")
    ax.axvline(warmup_s, color="grey", linewidth=0.8, linestyle=":", label="end of warm-up")
    style(ax, title, ylabel="responses / s", legend=legend, bottom=0)


def plot_statuses(ax: Any, responses: Any, title: str, span_s: float, bin_s: float = 1.0) -> None:
    """Answers by status code per `bin_s`, stacked, by completion time (perf.measure.Responses)."""
    ends, statuses = responses.end_s, responses.status
    edges = np.arange(0.0, span_s + bin_s / 2, bin_s)
    bottom = np.zeros(max(len(edges) - 1, 0))
    for code in sorted(set(statuses.tolist())):
        per, _ = np.histogram(ends[statuses == code], bins=edges)
        name = "transport error" if code == 0 else str(code)
        ax.bar(edges[:-1], per, width=0.9 * bin_s, align="edge", bottom=bottom, label=name, color=STATUS_COLOURS.get(name))
        bottom += per
    style(ax, title, ylabel=f"responses per {'second' if bin_s == 1 else f'{bin_s * 1000:g} ms'}")
