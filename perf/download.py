"""Scenario `download`: a 200 MiB object through GET /download_processed/<key>, memory, bytes and /healthz.

Issue 4, "what must hold" item 4. Against a stack of its own (Redis, S3 server, demo model, the API;
no worker, a download needs none):

1. The object is generated from a seed (1 MiB blocks of a seeded PCG64 stream, plus a partial last
   block, so any byte range can be regenerated to check against) and streamed to BUCKET_PROCESSED
   with the MinIO client (multipart), its sha256 computed on the way.
2. One full download while the API process's resident memory (VmRSS in /proc/<pid>/status) is
   sampled every 50 ms; idle RSS is the median over a quiet period just before. Goal: peak minus idle
   below 50 MB. The sha256 and length of the bytes received must equal the source's.
3. Range requests (first byte, a block boundary, the middle, a suffix, an open end, the last byte):
   each must be 206 with the right Content-Range and exactly the source's bytes; a range past the end
   must be 416.
4. Ten full downloads at once, each checked by sha256, while /healthz is probed every 20 ms on a fresh
   connection each time (`perf.loadgen probe`, as a kubelet probe does). Goal: /healthz p99 <= 20 ms
   over the probes made while the downloads ran. /healthz is probed alone first, for comparison.
   Meanwhile the S3 stand-in and the threads reading the downloads (this process) keep to every core
   but the first (`--rig-cpus`): in a deployment they are the object store and the clients, on
   machines of their own, and here, on the same two cores, they took 1.2 of them from the API and its
   probe. The ten downloads then run once more with them on any core, for comparison (no goal).

The downloads are read by threads of this process in 1 MiB `readinto` calls (socket reads and
sha256 release the GIL), so the client keeps up with the server and holds no body in memory.
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

from perf.common import (
    CpuMeter,
    Responses,
    Sampler,
    Stack,
    StackError,
    child,
    client_stats,
    cpu_list,
    figure,
    latency_stats,
    loadgen_command,
    log_events,
    log_size,
    machine_info,
    machine_markdown,
    markdown_table,
    ms,
    pin,
    results_dir,
    rss_mb,
    run_client,
    save,
    stop_on_sigterm,
    verdict,
    write_csv,
)
from webapp.downloads import CHUNK_BYTES

MIB = 1 << 20
BLOCK_BYTES = MIB
TAIL_BYTES = 1234  # a partial last block: ranges near the end cross a block that is not full
RSS_GOAL_MB = 50.0
HEALTHZ_GOAL_P99_MS = 20.0
READ_BYTES = MIB
SOCKET_TIMEOUT_S = 60.0
KEY = "perf/download.bin"


# -- the source object ------------------------------------------------------------------------------


class Source:
    """A deterministic object of `size` bytes: block i is PCG64([seed, i]).bytes(BLOCK_BYTES)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def block(self, index: int) -> bytes:
        start = index * BLOCK_BYTES
        data = np.random.default_rng([self.seed, index]).bytes(BLOCK_BYTES)
        return data[: max(0, min(BLOCK_BYTES, self.size - start))]

    def read_range(self, offset: int, length: int) -> bytes:
        first, last = offset // BLOCK_BYTES, (offset + length - 1) // BLOCK_BYTES
        data = b"".join(self.block(i) for i in range(first, last + 1))
        start = offset - first * BLOCK_BYTES
        return data[start:start + length]

    def reader(self) -> _Reader:
        return _Reader(self)


class _Reader:
    """A file-like view of the source for `put_object`: generated block by block, hashed as it goes."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.index = 0
        self.pending = b""
        self.sha256 = hashlib.sha256()
        self.served = 0

    def read(self, size: int = -1) -> bytes:
        want = self.source.size - self.served if size is None or size < 0 else size
        parts, have = [], 0
        while have < want and (self.pending or self.index * BLOCK_BYTES < self.source.size):
            if not self.pending:
                self.pending = self.source.block(self.index)
                self.index += 1
            take = self.pending[: want - have]
            self.pending = self.pending[len(take):]
            parts.append(take)
            have += len(take)
        data = b"".join(parts)
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
    started = time.monotonic()
    reader = source.reader()
    client.put_object(bucket, KEY, cast(BinaryIO, reader), length=source.size, part_size=16 * MIB,
                      content_type="application/octet-stream")
    elapsed = time.monotonic() - started
    stat = client.stat_object(bucket, KEY)
    if stat.size != source.size or reader.served != source.size:
        raise StackError(f"upload stored {stat.size} bytes (sent {reader.served}), expected {source.size}")
    return reader.sha256.hexdigest(), elapsed


# -- the client --------------------------------------------------------------------------------------


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
    """GET the object; read it in READ_BYTES pieces, hashing, keeping the body only when asked."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_TIMEOUT_S)
    digest, size, kept = hashlib.sha256(), 0, bytearray()
    try:
        conn.request("GET", f"/download_processed/{KEY}", headers=dict(headers or {}))
        response = conn.getresponse()
        buffer = memoryview(bytearray(READ_BYTES))
        while True:
            n = response.readinto(buffer)
            if not n:
                break
            digest.update(buffer[:n])
            size += n
            if keep or (response.status >= 400 and len(kept) < 4096):
                kept += buffer[:n]
        error = "" if response.status < 400 else bytes(kept[:300]).decode("utf-8", "replace")
        return Fetched(response.status, {k.lower(): v for k, v in response.getheaders()}, size, digest.hexdigest(),
                       time.monotonic() - started, bytes(kept), error)
    except (OSError, http.client.HTTPException) as error:
        return Fetched(0, {}, size, digest.hexdigest(), time.monotonic() - started, error=f"{type(error).__name__}: {error}")
    finally:
        conn.close()


# -- phases ------------------------------------------------------------------------------------------


def sample_idle(pid: int, seconds: float) -> list[float]:
    with Sampler(lambda: rss_mb(pid), interval_s=0.05) as sampler:
        time.sleep(seconds)
    return [value for _, value in sampler.samples]


def single_download(port: int, pid: int) -> tuple[Fetched, list[tuple[float, float]]]:
    with Sampler(lambda: rss_mb(pid), interval_s=0.05) as sampler:
        fetched = fetch(port)
        time.sleep(0.5)  # memory released after the response, or not
    return fetched, sampler.samples


def range_cases(size: int) -> list[tuple[str, tuple[int, int] | None]]:
    """(Range header, (offset, length) expected, or None for 416)."""
    middle = size // 2 + 12345
    return [
        ("bytes=0-0", (0, 1)),
        ("bytes=0-1023", (0, 1024)),
        (f"bytes={BLOCK_BYTES - 10}-{BLOCK_BYTES + 9}", (BLOCK_BYTES - 10, 20)),
        (f"bytes={middle}-{middle + MIB + 999}", (middle, MIB + 1000)),
        ("bytes=-5000", (size - 5000, 5000)),
        (f"bytes={size - 70000}-", (size - 70000, 70000)),
        (f"bytes={size - 1}-{size - 1}", (size - 1, 1)),
        (f"bytes={size - 10}-{size + 1000}", (size - 10, 10)),  # an end past the object is cut to its end
        (f"bytes={size}-", None),
    ]


def check_ranges(port: int, source: Source) -> list[dict[str, Any]]:
    rows = []
    for header, expected in range_cases(source.size):
        got = fetch(port, {"Range": header}, keep=True)
        if expected is None:
            ok = got.status == 416 and got.headers.get("content-range") == f"bytes */{source.size}"
            want = f"416, Content-Range bytes */{source.size}"
        else:
            offset, length = expected
            content_range = f"bytes {offset}-{offset + length - 1}/{source.size}"
            ok = (got.status == 206 and got.headers.get("content-range") == content_range
                  and got.headers.get("content-length") == str(length)
                  and got.body == source.read_range(offset, length))
            want = f"206, {content_range}"
        rows.append({"range": header, "expected": want, "status": got.status,
                     "content_range": got.headers.get("content-range", ""), "bytes": got.size, "ok": ok,
                     "error": got.error})
    return rows


def concurrent_downloads(args: argparse.Namespace, raw: Path, stack: Stack, rig_cpus: set[int],
                         name: str = "healthz") -> dict[str, Any]:
    """`args.concurrent` downloads at once, /healthz probed meanwhile (to raw/<name>.csv), API RSS sampled;
    the S3 stand-in and this process on `rig_cpus` meanwhile (empty: any core)."""
    results: list[Fetched | None] = [None] * args.concurrent

    def one(index: int) -> None:
        results[index] = fetch(stack.port)

    threads = [threading.Thread(target=one, args=(i,), name=f"download-{i}", daemon=True) for i in range(args.concurrent)]
    probe_cmd = loadgen_command("probe", stack.port, raw / f"{name}.csv", "--method", "GET", "--path", "/healthz",
                                "--kind", "healthz", "--interval-ms", str(args.healthz_interval_ms),
                                "--duration-s", str(args.timeout_s + 10))
    log_start = log_size(stack.api.log_path)
    s3_pid = stack.services[1].process.pid  # type: ignore[union-attr]
    with child(probe_cmd, raw / f"{name}.client.log", stack.env) as prober, \
            Sampler(lambda: rss_mb(stack.api.pid), interval_s=0.05) as sampler:
        time.sleep(1.0)  # the probe process is up and probing before the downloads start
        for pid in (s3_pid, os.getpid()):  # after the prober started: it stays on any core, as the API does
            pin(pid, rig_cpus)
        meter = CpuMeter({"api": stack.api.pid, "s3 server": s3_pid})
        own = resource.getrusage(resource.RUSAGE_SELF)
        started = time.time()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + args.timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = time.time()
        cores = meter.cores_used()
        used = resource.getrusage(resource.RUSAGE_SELF)
        cores["client (this process)"] = round((used.ru_utime + used.ru_stime - own.ru_utime - own.ru_stime)
                                               / max(ended - started, 1e-9), 2)
        for pid in (s3_pid, os.getpid()):
            pin(pid, set())
        time.sleep(0.5)
        if prober.poll() is not None:
            raise StackError(f"the /healthz probe exited early ({prober.returncode}): see {raw / (name + '.client.log')}")
    if any(thread.is_alive() for thread in threads):
        raise StackError(f"downloads still running after {args.timeout_s:g}s")
    stats = client_stats(raw / f"{name}.client.log", raw / f"{name}.stats.json")
    probes = Responses.read(raw / f"{name}.csv")
    probes.start_s += stats.get("t0_epoch", 0) - started  # on the downloads' clock: 0 = downloads started
    during = probes.where((probes.start_s >= 0) & (probes.start_s <= ended - started))
    storage_timeouts = sum("Read timed out" in str(e.get("message", ""))
                           for e in log_events(stack.api.log_path, "log", log_start))
    return {"fetched": [r for r in results if r is not None], "probes": probes, "during": during,
            "healthz": latency_stats(during.latency_ms),
            "seconds": ended - started, "cores": cores, "storage_timeouts": storage_timeouts, "rig_cpus": rig_cpus,
            "rss": [(t - (started - sampler.t0_epoch), v) for t, v in sampler.samples]}


# -- report ------------------------------------------------------------------------------------------


def plot(out: Path, idle_rss: float, single: list[tuple[float, float]], many: dict[str, Any],
         shared: dict[str, Any] | None, concurrent: int, size_mib: int) -> None:
    fig, (s_ax, m_ax, h_ax) = figure(3, f"download: {size_mib} MiB object through /download_processed", height=3.6)
    for ax, samples, title in ((s_ax, single, "API RSS during one full download"),
                               (m_ax, many["rss"], f"API RSS during {concurrent} concurrent downloads")):
        ax.plot([t for t, _ in samples], [v for _, v in samples], color="tab:blue", label="API VmRSS, every 50 ms")
        ax.axhline(idle_rss, color="grey", linestyle=":", label=f"idle {idle_rss:.0f} MB")
        ax.axhline(idle_rss + RSS_GOAL_MB, color="red", linewidth=0.8, label=f"idle + {RSS_GOAL_MB:g} MB (goal)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    probes = many["probes"]
    h_ax.plot(probes.start_s, probes.latency_ms, ".", markersize=3, label=f"/healthz, fresh connection, each probe "
              f"({rig_label(many['rig_cpus'])})")
    if shared is not None:
        h_ax.plot(shared["probes"].start_s, shared["probes"].latency_ms, ".", markersize=3, color="grey",
                  label=f"the same, S3 stand-in and readers on any core (no goal), downloads for {shared['seconds']:.1f} s")
    h_ax.axhline(HEALTHZ_GOAL_P99_MS, color="red", linewidth=0.8, label=f"goal p99 {HEALTHZ_GOAL_P99_MS:g} ms")
    h_ax.axvspan(0, many["seconds"], color="tab:orange", alpha=0.1, label=f"{concurrent} downloads running")
    h_ax.set_yscale("log")
    h_ax.set_title(f"/healthz every 20 ms while {concurrent} downloads run", fontsize=10)
    h_ax.set_xlabel("seconds since the downloads started")
    h_ax.set_ylabel("latency (ms)")
    h_ax.grid(alpha=0.3)
    h_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the slow probes are on top
    save(fig, out / "download.png")


def rig_label(cpus: set[int]) -> str:
    return f"S3 stand-in and readers on core(s) {','.join(map(str, sorted(cpus)))}" if cpus else "all on any core"


def summary(info: dict[str, Any], args: argparse.Namespace, source: Source, upload_s: float, idle: list[float],
            single: Fetched, single_rss: list[tuple[float, float]], source_sha: str, ranges: list[dict[str, Any]],
            idle_probe: Responses, many: dict[str, Any], shared: dict[str, Any] | None) -> str:
    idle_rss = statistics.median(idle)
    peak = max((v for _, v in single_rss), default=idle_rss)
    growth = peak - idle_rss
    after = single_rss[-1][1] if single_rss else idle_rss
    many_peak = max((v for _, v in many["rss"]), default=idle_rss)
    gaps = np.diff([t for t, _ in single_rss]) * 1000 if len(single_rss) > 1 else np.array([0.0])
    hs, idle_hs = many["healthz"], latency_stats(idle_probe.latency_ms)
    shared_hs = shared["healthz"] if shared is not None else {}
    fetched: list[Fetched] = many["fetched"]
    good = sum(1 for f in fetched if f.status == 200 and f.size == source.size and f.sha256 == source_sha)
    mb = source.size / 1e6
    download_rows = [[i + 1, f.status, f"{f.size:,}", "yes" if f.sha256 == source_sha else "**no**", f"{f.seconds:.1f}",
                      f"{f.size / 1e6 / max(f.seconds, 1e-9):.0f}" if f.status == 200 else "",
                      " ".join(f.error.split()).replace("|", "/")] for i, f in enumerate(fetched)]
    return "\n\n".join([
        f"# download: a {args.size_mib} MiB object through /download_processed ({info['date']})",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "## Set-up\n\n" + markdown_table(["setting", "value"], [
            ["object", f"{source.size:,} bytes ({args.size_mib} MiB + {TAIL_BYTES:,}), seed {source.seed}, "
                       f"sha256 `{source_sha[:16]}...`"],
            ["upload", f"MinIO client, multipart (16 MiB parts) to BUCKET_PROCESSED on the stack's S3 server "
                       f"({info['s3_server']}), {upload_s:.1f} s"],
            ["API", f"defaults (HTTP_THREADS 64, the view's {CHUNK_BYTES // 1024} KiB chunks); no worker"],
            ["RSS", "VmRSS of the API process from /proc/<pid>/status every 50 ms; idle = median over "
                    f"{args.idle_s:g} s before the download"],
            ["concurrent", f"{args.concurrent} full downloads at once, read in 1 MiB pieces, sha256 checked"],
            ["cores", f"during the {args.concurrent} downloads: {rig_label(many['rig_cpus'])} (`--rig-cpus "
                      f"{args.rig_cpus}`), the API and the /healthz prober on any core"
                      + ("; then once more with everything on any core" if shared is not None else "")],
            ["/healthz", f"every {args.healthz_interval_ms:g} ms on a fresh connection; {args.idle_probe_s:g} s alone "
                         "first for comparison"]]),
        "## Results\n\n" + markdown_table(["check", "measured", "goal", "verdict"], [
            ["API RSS growth, one download", f"{growth:.1f} MB (idle {idle_rss:.1f}, peak {peak:.1f}, "
                                             f"{len(single_rss)} samples)",
             f"< {RSS_GOAL_MB:g} MB", "met" if growth < RSS_GOAL_MB else "**missed**"],
            ["sha256 of the bytes received", f"{single.sha256[:16]}..., {single.size:,} bytes, {single.seconds:.1f} s "
                                             f"({mb / max(single.seconds, 1e-9):.0f} MB/s)", "= source",
             "met" if single.sha256 == source_sha and single.size == source.size else "**missed**"],
            ["Range requests", f"{sum(r['ok'] for r in ranges)} of {len(ranges)} exact", "all",
             "met" if all(r["ok"] for r in ranges) else "**missed**"],
            [f"/healthz p99 during {args.concurrent} downloads",
             f"{ms(hs['p99'])} ms (p50 {ms(hs['p50'])}, max {ms(hs['max'])}, {hs['count']} probes, "
             f"statuses {dict(many['during'].statuses())})",
             f"<= {HEALTHZ_GOAL_P99_MS:g} ms", verdict(hs["p99"], HEALTHZ_GOAL_P99_MS)],
            [f"{args.concurrent} concurrent downloads complete and exact", f"{good} of {len(fetched)} in "
                                                                          f"{many['seconds']:.1f} s",
             "all", "met" if good == args.concurrent else "**missed**"]]
            + ([[f"/healthz p99 during {args.concurrent} downloads, S3 stand-in and readers on any core",
                 f"{ms(shared_hs['p99'])} ms (p50 {ms(shared_hs['p50'])}, max {ms(shared_hs['max'])}, "
                 f"{shared_hs['count']} probes, statuses {dict(shared['during'].statuses())}); downloads "
                 f"{sum(f.sha256 == source_sha for f in shared['fetched'])} of {args.concurrent} exact in "
                 f"{shared['seconds']:.1f} s; cores used: " + ", ".join(f"{k} {v}" for k, v in shared["cores"].items()),
                 "none (for comparison)", ""]] if shared is not None else [])),
        f"- API RSS 0.5 s after the single download: {after:.1f} MB; peak during the {args.concurrent} concurrent "
        f"downloads: {many_peak:.1f} MB (+{many_peak - idle_rss:.1f} over idle; no goal, for information).\n"
        f"- /healthz with the API idle, just before: p50 {ms(idle_hs['p50'])}, p99 {ms(idle_hs['p99'])}, max "
        f"{ms(idle_hs['max'])} ms over {idle_hs['count']} probes.\n"
        f"- Aggregate throughput of the {args.concurrent} downloads: "
        f"{mb * len(fetched) / max(many['seconds'], 1e-9):.0f} MB/s; cores used meanwhile: "
        + ", ".join(f"{k} {v}" for k, v in many["cores"].items()) + ".\n"
        f"- Storage read timeouts the API logged during the {args.concurrent} downloads (urllib3 `Read timed out`; "
        f"the API builds its object store client with `timeout_s=2.0`): {many['storage_timeouts']}.\n"
        f"- RSS sampler regularity during the single download: interval median {np.median(gaps):.0f} ms, "
        f"max {gaps.max():.0f} ms.",
        "### Range requests\n\n" + markdown_table(
            ["Range", "expected", "status", "Content-Range", "bytes", "exact"],
            [[f"`{r['range']}`", r["expected"], r["status"], r["content_range"], f"{r['bytes']:,}",
              "yes" if r["ok"] else f"**no** {' '.join(r['error'].split())}"] for r in ranges]),
        "### Concurrent downloads\n\n" + markdown_table(
            ["#", "status", "bytes", "sha256 = source", "seconds", "MB/s", "error"], download_rows),
        "MB is 10^6 bytes throughout (VmRSS, read in KiB, is converted); MiB is 2^20 bytes.",
        "## Machine\n\n" + machine_markdown(info),
        "## Files\n\n- `download.png`: API RSS over time (one download; ten at once) and every /healthz probe\n"
        "- `download_rss.csv`, `download_ranges.csv`, `download_concurrent.csv`: the figures\n"
        "- `raw/`: every /healthz probe (`healthz.csv`, `healthz-shared.csv` with everything on any core, "
        "`healthz-idle.csv`), client stats, process logs",
    ]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf --scenario download", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter idle comparisons; the object and the downloads stay what the goals name")
    parser.add_argument("--size-mib", type=int, default=200, help="object size in MiB (plus a partial block)")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--healthz-interval-ms", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="bound on the concurrent downloads")
    parser.add_argument("--rig-cpus", default="auto",
                        help="cores of the S3 stand-in and the download readers during the concurrent downloads: "
                             "auto (every core but the first), all (no confinement, and no comparison run), or a "
                             "list such as 1 or 2-7")
    args = parser.parse_args(argv)
    args.idle_s = 1.0 if args.quick else 3.0
    args.idle_probe_s = 2.0 if args.quick else 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    info = machine_info()
    out = results_dir("download")
    raw = out / "raw"
    print(f"download: results in {out}", flush=True)
    source = Source(args.size_mib * MIB + TAIL_BYTES, args.seed)
    with Stack(raw / "logs", worker_processes=0) as stack:
        info["s3_server"] = stack.services[1].server
        bucket = stack.env.get("BUCKET_PROCESSED", "processed-data")
        print(f"download: uploading {source.size:,} bytes to {bucket}/{KEY}", flush=True)
        source_sha, upload_s = upload(stack.env, bucket, source)
        warm = fetch(stack.port, {"Range": "bytes=0-1023"}, keep=True)
        if warm.status != 206:
            raise StackError(f"warm-up range request answered {warm.status} {warm.error} {warm.body[:200]!r}")
        idle = sample_idle(stack.api.pid, args.idle_s)
        print("download: one full download, API RSS every 50 ms", flush=True)
        single, single_rss = single_download(stack.port, stack.api.pid)
        print(f"download: {single.status}, {single.size:,} bytes in {single.seconds:.1f} s", flush=True)
        ranges = check_ranges(stack.port, source)
        run_client("probe", stack.port, raw / "healthz-idle.csv", raw, timeout_s=args.idle_probe_s + 30, args=[
            "--method", "GET", "--path", "/healthz", "--kind", "healthz", "--interval-ms", str(args.healthz_interval_ms),
            "--duration-s", str(args.idle_probe_s)])
        idle_probe = Responses.read(raw / "healthz-idle.csv")
        print(f"download: {args.concurrent} concurrent downloads, /healthz every {args.healthz_interval_ms:g} ms",
              flush=True)
        rig = cpu_list(args.rig_cpus)
        many = concurrent_downloads(args, raw, stack, rig)
        shared = None
        if rig:
            print(f"download: {args.concurrent} concurrent downloads again, S3 stand-in and readers on any core",
                  flush=True)
            shared = concurrent_downloads(args, raw, stack, set(), "healthz-shared")
    write_csv(out / "download_rss.csv", ["phase", "t_s", "rss_mb"],
              [["idle", i * 0.05, round(v, 2)] for i, v in enumerate(idle)]
              + [["single", round(t, 3), round(v, 2)] for t, v in single_rss]
              + [["concurrent", round(t, 3), round(v, 2)] for t, v in many["rss"]])
    write_csv(out / "download_ranges.csv", ["range", "expected", "status", "content_range", "bytes", "exact"],
              [[r["range"], r["expected"], r["status"], r["content_range"], r["bytes"], int(r["ok"])] for r in ranges])
    write_csv(out / "download_concurrent.csv", ["download", "status", "bytes", "sha256_ok", "seconds", "error"],
              [[i + 1, f.status, f.size, int(f.sha256 == source_sha), round(f.seconds, 3), f.error]
               for i, f in enumerate(many["fetched"])])
    idle_rss = statistics.median(idle)
    plot(out, idle_rss, single_rss, many, shared, args.concurrent, args.size_mib)
    (out / "summary.md").write_text(summary(info, args, source, upload_s, idle, single, single_rss, source_sha, ranges,
                                            idle_probe, many, shared))
    growth = max((v for _, v in single_rss), default=idle_rss) - idle_rss
    hs = many["healthz"]
    exact = single.sha256 == source_sha and single.size == source.size
    all_ok = sum(1 for run in (many, shared) if run for f in run["fetched"] if f.status == 200 and f.sha256 == source_sha)
    expected = args.concurrent * (2 if shared else 1)
    print(f"download: RSS growth {growth:.1f} MB (goal < {RSS_GOAL_MB:g}); sha256 {'ok' if exact else 'MISMATCH'}; "
          f"ranges {sum(r['ok'] for r in ranges)}/{len(ranges)} exact; {all_ok}/{expected} concurrent exact; "
          f"/healthz p99 {ms(hs['p99'])} ms (goal <= {HEALTHZ_GOAL_P99_MS:g}; {rig_label(rig)})"
          + (f", {ms(shared['healthz']['p99'])} ms with everything on any core" if shared else "")
          + f"; summary in {out / 'summary.md'}",
          flush=True)
    broken = (not exact or not all(r["ok"] for r in ranges) or all_ok != expected
              or any(run["probes"].invalid().total() > 0 for run in (many, shared) if run))
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
