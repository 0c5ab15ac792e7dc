"""Scenario `download`: a 200 MiB object through GET /download_processed/<key> (issue 4, item 4): the API's
memory during one download (growth < 50 MB), its bytes (sha256, Range requests), and /healthz during ten at once
(p99 <= 20 ms), with the S3 stand-in and the readers kept off the first core (`--rig-cpus`), then on any core.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import resource
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from perf.measure import CpuMeter, Responses, Sampler, latency_stats, log_events, log_size, rss_bytes
from perf.results import begin, cores_text, figure, goals, ms, save, setup, style, table, verdict, write_csv, write_summary
from perf.runs import client_stats, loadgen, run_client, scenario_parser
from perf.stack import Stack, StackError, cpu_list, pin, wait_child
from webapp.downloads import CHUNK_BYTES

MIB = 1 << 20
TAIL_BYTES = 1234  # a partial last block: ranges near the end cross a block that is not full
RSS_GOAL_MB = 50.0
HEALTHZ_GOAL_P99_MS = 20.0
KEY = "perf/download.bin"
SIZE_MIB, SEED, CONCURRENT = 200, 20261126, 10
TIMEOUT_S = 600.0  # bound on the concurrent downloads


@dataclass
class Source:
    """A deterministic object of `size` bytes, regenerated block by block."""

    size: int
    seed: int

    def block(self, index: int) -> bytes:
        return np.random.default_rng([self.seed, index]).bytes(MIB)[: max(0, min(MIB, self.size - index * MIB))]

    def read_range(self, offset: int, length: int) -> bytes:
        first, last = offset // MIB, (offset + length - 1) // MIB
        data = b"".join(self.block(i) for i in range(first, last + 1))
        return data[offset - first * MIB:offset - first * MIB + length]


class Reader:
    """The source as a file for `put_object`, generated as it is read and hashed on the way."""

    def __init__(self, source: Source) -> None:
        self.blocks = (source.block(i) for i in range(-(-source.size // MIB)))
        self.pending, self.sha256, self.served = bytearray(), hashlib.sha256(), 0

    def read(self, size: int) -> bytes:
        while len(self.pending) < size and (block := next(self.blocks, None)) is not None:
            self.pending += block
        data = bytes(self.pending[:size])
        del self.pending[:size]
        self.sha256.update(data)
        self.served += len(data)
        return data


def upload(env: Mapping[str, str], bucket: str, source: Source) -> tuple[str, float]:
    """Stream the source to `bucket`/KEY with the MinIO client; its sha256 and the seconds it took."""
    from minio import Minio

    client = Minio(env["S3_ENDPOINT"], access_key=env.get("S3_ACCESS_KEY", "minioadmin"),
                   secret_key=env.get("S3_SECRET_KEY", "minioadmin"), secure=False, region="us-east-1")
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    started, reader = time.monotonic(), Reader(source)
    client.put_object(bucket, KEY, cast(BinaryIO, reader), length=source.size, part_size=16 * MIB,
                      content_type="application/octet-stream")
    elapsed = time.monotonic() - started
    if (stored := client.stat_object(bucket, KEY).size) != source.size or reader.served != source.size:
        raise StackError(f"upload stored {stored} bytes (sent {reader.served}), expected {source.size}")
    return reader.sha256.hexdigest(), elapsed


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    size: int
    sha256: str
    seconds: float
    body: bytes = b""
    error: str = ""


def fetch(port: int, headers: Mapping[str, str] | None = None, keep: bool = False) -> Fetched:
    """GET the object in 1 MiB reads, hashing, keeping the body only when asked (or the start of an error)."""
    started, digest, size, kept = time.monotonic(), hashlib.sha256(), 0, bytearray()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/download_processed/{KEY}", headers=dict(headers or {}))
        response = conn.getresponse()
        buffer = memoryview(bytearray(MIB))
        while n := response.readinto(buffer):
            digest.update(buffer[:n])
            size += n
            if keep or (response.status >= 400 and len(kept) < 4096):
                kept += buffer[:n]
        return Fetched(response.status, {k.lower(): v for k, v in response.getheaders()}, size, digest.hexdigest(),
                       time.monotonic() - started, bytes(kept),
                       "" if response.status < 400 else bytes(kept[:300]).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as error:
        return Fetched(0, {}, size, digest.hexdigest(), time.monotonic() - started, error=f"{type(error).__name__}: {error}")
    finally:
        conn.close()


def check_ranges(port: int, source: Source) -> list[dict[str, Any]]:
    """Range requests near every edge (and one past the end, cut to it); a range starting at the end is a 416."""
    size, middle = source.size, source.size // 2 + 12345
    cases: list[tuple[str, tuple[int, int] | None]] = [
        ("bytes=0-0", (0, 1)), ("bytes=0-1023", (0, 1024)), (f"bytes={MIB - 10}-{MIB + 9}", (MIB - 10, 20)),
        (f"bytes={middle}-{middle + MIB + 999}", (middle, MIB + 1000)), ("bytes=-5000", (size - 5000, 5000)),
        (f"bytes={size - 70000}-", (size - 70000, 70000)), (f"bytes={size - 1}-{size - 1}", (size - 1, 1)),
        (f"bytes={size - 10}-{size + 1000}", (size - 10, 10)), (f"bytes={size}-", None)]
    rows = []
    for header, expected in cases:
        got = fetch(port, {"Range": header}, keep=True)
        if expected is None:
            want = f"bytes */{size}"
            ok = got.status == 416 and got.headers.get("content-range") == want
        else:
            offset, length = expected
            want = f"bytes {offset}-{offset + length - 1}/{size}"
            ok = (got.status == 206 and got.headers.get("content-range") == want
                  and got.headers.get("content-length") == str(length) and got.body == source.read_range(offset, length))
        rows.append({"range": header, "expected": f"{416 if expected is None else 206}, {want}", "status": got.status,
                     "content_range": got.headers.get("content-range", ""), "bytes": got.size, "ok": ok, "error": got.error})
    return rows


def concurrent_downloads(args: argparse.Namespace, raw: Path, stack: Stack, rig: set[int], name: str) -> dict[str, Any]:
    """`CONCURRENT` downloads at once, /healthz probed meanwhile, API RSS sampled; the S3 stand-in and this
    process on the `rig` cores meanwhile (empty: any core)."""
    results: list[Fetched | None] = [None] * CONCURRENT
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fetch(stack.port)), daemon=True)
               for i in range(CONCURRENT)]
    log_start = log_size(stack.api.log_path)
    assert stack.s3.process is not None
    s3_pid = stack.s3.process.pid
    prober = loadgen("probe", stack.port, raw / f"{name}.csv", raw, ["--path", "/healthz", "--interval-ms", "20",
                                                                    "--duration-s", str(TIMEOUT_S + 10)])
    with prober, Sampler(lambda: rss_bytes(stack.api.pid) / 1e6, 0.05) as memory:
        time.sleep(1.0)  # the prober is up and probing before the downloads start
        for pid in (s3_pid, os.getpid()):  # after the prober started: it stays on any core, as the API does
            pin(pid, rig)
        meter, own, started = CpuMeter({"api": stack.api.pid, "s3 server": s3_pid}), resource.getrusage(resource.RUSAGE_SELF), time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, started + TIMEOUT_S - time.time()))
        ended = time.time()
        cores, used = meter.cores_used(), resource.getrusage(resource.RUSAGE_SELF)
        cores["client (this process)"] = round((used.ru_utime + used.ru_stime - own.ru_utime - own.ru_stime)
                                               / max(ended - started, 1e-9), 2)
        for pid in (s3_pid, os.getpid()):
            pin(pid, set())
        time.sleep(0.5)
        if not prober.alive():
            raise StackError(f"the /healthz probe exited early: see {prober.log_path}")
    wait_child(prober, name, 30)
    if any(thread.is_alive() for thread in threads):
        raise StackError(f"downloads still running after {TIMEOUT_S:g}s")
    probes = Responses.read(raw / f"{name}.csv", client_stats(prober, raw / f"{name}.csv")["t0_epoch"] - started)  # downloads' clock
    during = probes.where((probes.start_s >= 0) & (probes.start_s <= ended - started))
    return {"fetched": [r for r in results if r is not None], "probes": probes, "during": during,
            "healthz": latency_stats(during.latency_ms), "seconds": ended - started, "cores": cores, "rig": rig,
            "storage_timeouts": sum("Read timed out" in str(e.get("message", ""))
                                    for e in log_events(stack.api.log_path, "log", log_start)),
            "rss": [(t - (started - memory.t0_epoch), v) for t, v in memory.samples]}


def rig_label(cpus: set[int]) -> str:
    return f"S3 stand-in and readers on core(s) {','.join(map(str, sorted(cpus)))}" if cpus else "all on any core"


def plot(out: Path, idle_rss: float, single: list[tuple[float, float]], many: dict[str, Any],
         shared: dict[str, Any] | None, args: argparse.Namespace) -> None:
    fig, (s_ax, m_ax, h_ax) = figure(3, f"download: {SIZE_MIB} MiB object through /download_processed", height=3.6)
    for ax, samples, title in ((s_ax, single, "API RSS during one full download"),
                               (m_ax, many["rss"], f"API RSS during {CONCURRENT} concurrent downloads")):
        ax.plot([t for t, _ in samples], [v for _, v in samples], color="tab:blue", label="API VmRSS, every 50 ms")
        ax.axhline(idle_rss, color="grey", linestyle=":", label=f"idle {idle_rss:.0f} MB")
        ax.axhline(idle_rss + RSS_GOAL_MB, color="red", linewidth=0.8, label=f"idle + {RSS_GOAL_MB:g} MB (goal)")
        style(ax, title, "seconds", "MB", legend="lower right")
    h_ax.plot(many["probes"].start_s, many["probes"].latency_ms, ".", markersize=3,
              label=f"/healthz, fresh connection, each probe ({rig_label(many['rig'])})")
    if shared is not None:
        h_ax.plot(shared["probes"].start_s, shared["probes"].latency_ms, ".", markersize=3, color="grey",
                  label=f"the same, S3 stand-in and readers on any core (no goal), downloads for {shared['seconds']:.1f} s")
    h_ax.axhline(HEALTHZ_GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {HEALTHZ_GOAL_P99_MS:g} ms")
    h_ax.axvspan(0, many["seconds"], color="tab:orange", alpha=0.1, label=f"{CONCURRENT} downloads running")
    style(h_ax, f"/healthz every 20 ms while {CONCURRENT} downloads run", "seconds since the downloads started",
          "latency (ms)", log="y", below=2)  # below: the slow probes are on top
    save(fig, out / "download.png")


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("download", __doc__, "shorter idle comparisons; the object and downloads stay", workers=0)
    parser.add_argument("--rig-cpus", default="auto", help="cores of the S3 stand-in and the readers during the concurrent "
                        "downloads: auto (every core but the first), all (anywhere, and no comparison run), or a list")
    args = parser.parse_args(argv)
    idle_s, idle_probe_s = (1.0, 2.0) if args.quick else (3.0, 5.0)
    info, out, raw = begin("download")
    source = Source(SIZE_MIB * MIB + TAIL_BYTES, SEED)
    rig = cpu_list(args.rig_cpus)
    with Stack(raw / "logs", workers=0) as stack:
        info["s3_server"] = stack.s3.server
        bucket = stack.env.get("BUCKET_PROCESSED", "processed-data")
        print(f"download: uploading {source.size:,} bytes to {bucket}/{KEY}", flush=True)
        source_sha, upload_s = upload(stack.env, bucket, source)
        if (warm := fetch(stack.port, {"Range": "bytes=0-1023"}, keep=True)).status != 206:
            raise StackError(f"warm-up range request answered {warm.status} {warm.error} {warm.body[:200]!r}")
        def rss() -> float:
            return rss_bytes(stack.api.pid) / 1e6

        with Sampler(rss, 0.05) as idle:
            time.sleep(idle_s)
        with Sampler(rss, 0.05) as memory:
            single = fetch(stack.port)
            time.sleep(0.5)  # memory released after the response, or not
        single_rss = memory.samples
        ranges = check_ranges(stack.port, source)
        run_client("probe", stack.port, raw / "healthz-idle.csv", timeout_s=idle_probe_s + 30,
                   args=["--path", "/healthz", "--interval-ms", "20", "--duration-s", str(idle_probe_s)])
        print(f"download: {CONCURRENT} concurrent downloads ({rig_label(rig)}), /healthz every 20 ms", flush=True)
        many = concurrent_downloads(args, raw, stack, rig, "healthz")
        shared = concurrent_downloads(args, raw, stack, set(), "healthz-shared") if rig else None
    idle_rss = statistics.median(idle.values())
    write_csv(out / "download_rss.csv", ["phase", "t_s", "rss_mb"],
              [["idle", i * 0.05, round(v, 2)] for i, v in enumerate(idle.values())]
              + [[phase, round(t, 3), round(v, 2)] for phase, samples in (("single", single_rss), ("concurrent", many["rss"]))
                 for t, v in samples])
    plot(out, idle_rss, single_rss, many, shared, args)
    peak = max((v for _, v in single_rss), default=idle_rss)
    growth, mb = peak - idle_rss, source.size / 1e6
    exact = single.sha256 == source_sha and single.size == source.size
    hs, idle_hs = many["healthz"], latency_stats(Responses.read(raw / "healthz-idle.csv").latency_ms)
    good = sum(1 for f in many["fetched"] if f.status == 200 and f.size == source.size and f.sha256 == source_sha)
    gaps = np.diff([t for t, _ in single_rss]) * 1000 if len(single_rss) > 1 else np.array([0.0])
    rows = [["API RSS growth, one download", f"{growth:.1f} MB (idle {idle_rss:.1f}, peak {peak:.1f}, {len(single_rss)} "
             "samples)", f"< {RSS_GOAL_MB:g} MB", "met" if growth < RSS_GOAL_MB else "**missed**"],
            ["sha256 of the bytes received", f"{single.sha256[:16]}..., {single.size:,} bytes, {single.seconds:.1f} s "
             f"({mb / max(single.seconds, 1e-9):.0f} MB/s)", "= source", "met" if exact else "**missed**"],
            ["Range requests", f"{sum(r['ok'] for r in ranges)} of {len(ranges)} exact", "all",
             "met" if all(r["ok"] for r in ranges) else "**missed**"],
            [f"/healthz p99 during {CONCURRENT} downloads", f"{ms(hs['p99'])} ms (p50 {ms(hs['p50'])}, max "
             f"{ms(hs['max'])}, {hs['count']} probes, statuses {dict(many['during'].statuses())})",
             f"<= {HEALTHZ_GOAL_P99_MS:g} ms", verdict(hs["p99"], HEALTHZ_GOAL_P99_MS)],
            [f"{CONCURRENT} concurrent downloads complete and exact", f"{good} of {len(many['fetched'])} in "
             f"{many['seconds']:.1f} s", "all", "met" if good == CONCURRENT else "**missed**"]]
    if shared is not None:
        sh = shared["healthz"]
        rows.append([f"/healthz p99 during {CONCURRENT} downloads, S3 stand-in and readers on any core",
                     f"{ms(sh['p99'])} ms (p50 {ms(sh['p50'])}, max {ms(sh['max'])}, {sh['count']} probes, statuses "
                     f"{dict(shared['during'].statuses())}); downloads {sum(f.sha256 == source_sha for f in shared['fetched'])} "
                     f"of {CONCURRENT} exact in {shared['seconds']:.1f} s; cores used: {cores_text(shared['cores'])}",
                     "none (for comparison)", ""])
    write_summary(out, f"download: a {SIZE_MIB} MiB object through /download_processed", info, __doc__, [
        setup(args) + f"\n\nThe object: {source.size:,} bytes ({SIZE_MIB} MiB + {TAIL_BYTES:,}), seed {SEED}, sha256 "
        f"`{source_sha[:16]}...`, uploaded in 16 MiB parts to {info['s3_server']} in {upload_s:.1f} s; the API at its defaults "
        f"({CHUNK_BYTES // 1024} KiB chunks), no worker; idle RSS: the median over {idle_s:g} s; during the downloads "
        f"{rig_label(rig)}" + ("; then again with everything on any core." if shared else "."),
        goals("download", ["check", "measured", "goal", "verdict"], rows),
        f"- API RSS 0.5 s after the single download: {single_rss[-1][1] if single_rss else idle_rss:.1f} MB; peak during "
        f"the {CONCURRENT} concurrent downloads: {max((v for _, v in many['rss']), default=idle_rss):.1f} MB.\n"
        f"- /healthz with the API idle, just before: p50 {ms(idle_hs['p50'])}, p99 {ms(idle_hs['p99'])}, max "
        f"{ms(idle_hs['max'])} ms over {idle_hs['count']} probes.\n"
        f"- Aggregate throughput of the {CONCURRENT} downloads: {mb * len(many['fetched']) / max(many['seconds'], 1e-9):.0f} "
        f"MB/s; cores used meanwhile: {cores_text(many['cores'])}.\n"
        f"- Storage read timeouts the API logged during the {CONCURRENT} downloads: {many['storage_timeouts']}.\n"
        f"- RSS sampler regularity during the single download: interval median {np.median(gaps):.0f} ms, max {gaps.max():.0f} ms.",
        "### Range requests\n\n" + table(out / "download_ranges.csv", ["range", "expected", "status", "content_range", "bytes", "exact"], [
            [r["range"], r["expected"], r["status"], r["content_range"], r["bytes"], "yes" if r["ok"] else f"**no** {r['error']}"]
            for r in ranges]),
        "### Concurrent downloads\n\n" + table(out / "download_concurrent.csv", ["download", "status", "bytes", "sha256_ok",
                                                                                  "seconds", "MB_per_s", "error"], [
            [i + 1, f.status, f.size, "yes" if f.sha256 == source_sha else "**no**", round(f.seconds, 3),
             round(f.size / 1e6 / max(f.seconds, 1e-9)) if f.status == 200 else "", " ".join(f.error.split()).replace("|", "/")]
            for i, f in enumerate(many["fetched"])]),
        "MB is 10^6 bytes throughout; MiB is 2^20 bytes."],
        {"download.png": "API RSS over time (one download; ten at once) and every /healthz probe",
         "download_rss.csv, download_ranges.csv, download_concurrent.csv": "the figures"})
    runs = [run for run in (many, shared) if run]
    all_ok = sum(1 for run in runs for f in run["fetched"] if f.status == 200 and f.sha256 == source_sha)
    broken = not exact or not all(r["ok"] for r in ranges) or all_ok != CONCURRENT * len(runs)
    return 1 if broken or any(run["probes"].invalid().total() for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
