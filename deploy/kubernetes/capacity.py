#!/usr/bin/env python3
"""Measures one `bestiary serve`'s capacity and load signal with wrk, for the autoscaling threshold.

For each number of concurrent clients, wrk POSTs one real photo to /v1/classify for a fixed time
(keep-alive, closed loop); the script records throughput, latency percentiles, errors, the mean
images in flight from the server's own counter (what the KEDA query reads), the CPU it used and its
peak resident memory. Prints a Markdown table (the one in deploy/kubernetes/README.md) and, with
--json, the raw figures.

    .tools/venv/bin/python deploy/kubernetes/capacity.py --seconds 15 --clients 1,2,3,4,5,6,8,12,16,32 \
        --serve-arg=--max-concurrent-requests=32 --serve-arg=--max-queue=64    # the Deployment's bounds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "animals10" / "images"

# wrk script: POST the photo; at the end, one JSON line with the figures wrk measured.
WRK_LUA = r"""
local f = assert(io.open(os.getenv("BESTIARY_PHOTO"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"
local non2xx = 0
response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(base: str) -> dict[str, float]:
    """The unlabelled samples of /metrics (name → value)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+) ([-+0-9.eE]+|NaN)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of a process, in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0]) * 1024
    return figures


def busy_cpu_seconds() -> float:
    """CPU time every core of the machine has spent busy (/proc/stat), in seconds."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of finished children (the wrk runs; the server is not reaped until the end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(timeout: float) -> None:
    """Waits (at most `timeout` s) until no compiler or linker runs on this shared machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = subprocess.run(["pgrep", "-x", "rustc|cc1|cc1plus|ld|cargo|docker-buildx"], capture_output=True).stdout
        if not busy.strip():
            return
        time.sleep(2)


def reset_peak(pid: int) -> None:
    """Restarts VmHWM from the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bestiary serve exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("bestiary serve did not become ready")


def default_photo() -> Path:
    photos = sorted(SHARED_PHOTOS.glob("*/*.jp*g"))
    if not photos:
        sys.exit("give --photo (../shared/data/animals10 is absent)")
    # The photo nearest the collection's median size (animals10: about 300 × 225).
    photos.sort(key=lambda p: p.stat().st_size)
    return photos[len(photos) // 2]


def run_wrk(wrk: str, url: str, clients: int, seconds: float, script: Path, photo: Path) -> dict:
    out = subprocess.run(
        [wrk, "-t", "1", "-c", str(clients), "-d", f"{round(seconds)}s",
         "--timeout", "30s", "-s", str(script), url],
        check=True, capture_output=True, text=True, env=dict(os.environ, BESTIARY_PHOTO=str(photo)),
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    return json.loads(line.removeprefix("WRK_JSON "))


def measure(args) -> list[dict]:
    binary = Path(args.bin or os.environ.get("BESTIARY_BIN", ROOT / "target" / "debug" / "bestiary"))
    wrk = shutil.which("wrk") or sys.exit("wrk is absent (Debian package wrk)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_args = [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port), *args.serve_arg]
    proc = subprocess.Popen(serve_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_LUA)
        try:
            wait_ready(base, proc)
            idle = proc_status(proc.pid)
            print(f"idle after warm-up: RSS {idle['VmRSS'] / 2**20:.0f} MiB", file=sys.stderr)
            # Warm the connections and allocator.
            run_wrk(wrk, f"{base}/v1/classify", 2, 3, script, args.photo)
            for clients in args.clients:
                # The machine may be shared: a row where other processes took more than
                # --max-other-cores is measured again (up to --attempts times).
                for attempt in range(args.attempts):
                    wait_quiet(args.wait_quiet)
                    reset_peak(proc.pid)
                    before, t0 = scrape(base), time.monotonic()
                    busy0, wrk0 = busy_cpu_seconds(), children_cpu_seconds()
                    figures = run_wrk(wrk, f"{base}/v1/classify", clients, args.seconds, script, args.photo)
                    after, t1 = scrape(base), time.monotonic()
                    busy1, wrk1 = busy_cpu_seconds(), children_cpu_seconds()
                    elapsed = t1 - t0
                    server_cpu = (after["bestiary_process_cpu_seconds_total"]
                                  - before["bestiary_process_cpu_seconds_total"])
                    others = max(0.0, (busy1 - busy0) - server_cpu - (wrk1 - wrk0)) / elapsed
                    if others <= args.max_other_cores:
                        break
                    print(f"{clients} clients: other processes took {others:.2f} cores; again", file=sys.stderr)
                memory = proc_status(proc.pid)
                row = {
                    "clients": clients,
                    "requests_per_s": figures["requests"] / (figures["duration_us"] / 1e6),
                    "p50_ms": figures["p50_us"] / 1e3,
                    "p90_ms": figures["p90_us"] / 1e3,
                    "p99_ms": figures["p99_us"] / 1e3,
                    "max_ms": figures["max_us"] / 1e3,
                    "errors": sum(figures[k] for k in ("connect", "read", "write", "status", "timeout")),
                    "in_flight": (after["bestiary_in_flight_image_seconds_total"]
                                  - before["bestiary_in_flight_image_seconds_total"]) / elapsed,
                    "cpu_cores": server_cpu / elapsed,
                    "wrk_cores": (wrk1 - wrk0) / elapsed,
                    "other_cores": others,
                    "rss_peak_mib": memory.get("VmHWM", memory["VmRSS"]) / 2**20,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            rows.append({
                "idle_rss_mib": idle["VmRSS"] / 2**20,
                "peak_rss_mib": max(r["rss_peak_mib"] for r in rows),
            })
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", help="the bestiary binary (default: $BESTIARY_BIN, else target/debug/bestiary)")
    parser.add_argument("--photo", type=Path, help="the JPEG to send (default: a median-sized animals10 photo)")
    parser.add_argument("--clients", default="1,2,3,4,6,8,16,32,64",
                        type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--max-other-cores", type=float, default=0.15,
                        help="remeasure a row when other processes used more CPU than this")
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--wait-quiet", type=float, default=300,
                        help="seconds to wait for running compilers to finish before each row")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `serve` argument (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    args.photo = args.photo or default_photo()
    rows = measure(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"photo {args.photo.name} ({args.photo.stat().st_size} bytes), {args.seconds:.0f} s per row, "
          f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
    print("| clients | req/s | p50 ms | p90 ms | p99 ms | errors | images in flight (signal) | server CPU cores | wrk / others cores | peak RSS MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows[:-1]:
        print(f"| {r['clients']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} | {r['in_flight']:.2f} | {r['cpu_cores']:.2f} | "
              f"{r['wrk_cores']:.2f} / {r['other_cores']:.2f} | {r['rss_peak_mib']:.0f} |")
    print(f"idle RSS {rows[-1]['idle_rss_mib']:.0f} MiB, peak over the run {rows[-1]['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
