"""The soak: `bestiary serve` held at several times its capacity by wrk for a while, checking the
promises of overload: every response is 200 or 429 with Retry-After, resident memory stays in
a band, admitted requests keep a bounded p99, and the server is healthy afterwards.

Capacity is measured first (wrk with two connections, all admitted); the soak then runs wrk
with four connections per admitted request (--max-concurrent-requests), each pausing between
requests so that together they offer --overload (2) times the capacity: about half the
arrivals find the server full and are refused at once. The p99 of admitted requests comes from the server's
own latency histogram (bestiary_request_duration_seconds, route /v1/classify, status 200),
scraped before and after; RSS is sampled from /proc every second.

    scripts/soak                       # 10 minutes, the README's figures
    scripts/soak --seconds 20 --check  # the bounded run CI does (tests/system/test_soak.py)
"""

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WRK_SCRIPT = r"""
wrk.method = "POST"
local f = io.open(os.getenv("SOAK_PHOTO"), "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"
-- Each connection waits this long before its next request: the offered rate is then about
-- connections / delay whatever the answers, as an open-loop load would be.
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
function delay() return delay_ms end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} ; missing_retry_after = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    missing_retry_after = missing_retry_after + 1
  end
end
function done(summary, latency, requests)
  local total, missing = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do total[status] = (total[status] or 0) + n end
    missing = missing + t:get("missing_retry_after")
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d": %d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'SOAK-JSON {"requests": %d, "seconds": %.3f, "statuses": {%s}, "missing_retry_after": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ", "), missing,
    e.connect, e.read, e.write, e.timeout))
end
"""


def bestiary_bin() -> Path:
    return Path(os.environ.get("BESTIARY_BIN", ROOT / "target" / "debug" / "bestiary"))


def make_photo(path: Path) -> None:
    from PIL import Image

    image = Image.new("RGB", (320, 240))
    for x in range(0, 320, 8):
        for y in range(0, 240, 8):
            image.paste(((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    path.write_bytes(out.getvalue())


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_photo(url: str, photo: bytes, timeout: float = 30) -> int:
    request = urllib.request.Request(url, data=photo, headers={"Content-Type": "image/jpeg"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def admitted_histogram(base: str) -> dict[float, float]:
    """Cumulative bucket counts of /v1/classify requests answered 200, by upper bound."""
    _, text = get(f"{base}/metrics")
    buckets: dict[float, float] = {}
    for line in text.decode().splitlines():
        if not line.startswith("bestiary_request_duration_seconds_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        if 'route="/v1/classify"' not in labels or 'status="200"' not in labels:
            continue
        bound = labels.split('le="', 1)[1].split('"', 1)[0]
        buckets[math.inf if bound == "+Inf" else float(bound)] = float(value)
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of the requests between two scrapes, interpolated within its bucket as
    Prometheus's histogram_quantile does."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def mean_mib(values: list[int]) -> float | None:
    return round(sum(values) / len(values) / 2**20, 1) if values else None


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wrk(url: str, connections: int, seconds: int, script: Path, photo: Path, delay_ms: float = 0) -> dict:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is absent (scripts/install-system-packages installs it)")
    threads = max(1, min(2, connections))
    result = subprocess.run(
        [binary, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s",
         "-s", str(script), url],
        capture_output=True, text=True, env=dict(os.environ, SOAK_PHOTO=str(photo), SOAK_DELAY_MS=str(int(delay_ms))), check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("SOAK-JSON "):
            report = json.loads(line[len("SOAK-JSON "):])
            report["statuses"] = {int(k): v for k, v in report["statuses"].items()}
            return report
    raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")


def soak(seconds: int, max_concurrent: int, max_queue: int, overload: float = 2.0,
         connections_per_slot: int = 4) -> dict:
    with tempfile.TemporaryDirectory(prefix="bestiary-soak-") as tmp:
        tmp = Path(tmp)
        photo = tmp / "photo.jpg"
        make_photo(photo)
        script = tmp / "soak.lua"
        script.write_text(WRK_SCRIPT)
        port_probe = __import__("socket").socket()
        port_probe.bind(("127.0.0.1", 0))
        port = port_probe.getsockname()[1]
        port_probe.close()
        log = open(tmp / "serve.log", "wb")
        server = subprocess.Popen(
            [str(bestiary_bin()), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--bucket", str(tmp), "--max-concurrent-requests", str(max_concurrent),
             "--max-queue", str(max_queue), "--model-poll-interval", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
                try:
                    if get(f"{base}/v2/health/ready", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            url = f"{base}/v1/classify"
            photo_bytes = photo.read_bytes()
            for _ in range(5):  # warm up the sessions
                post_photo(url, photo_bytes)

            capacity_run = wrk(url, connections=2, seconds=max(5, min(15, seconds // 4)), script=script, photo=photo)
            capacity = capacity_run["statuses"].get(200, 0) / capacity_run["seconds"]

            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample():
                start = time.time()
                while not stop.wait(1.0):
                    rss = rss_bytes(server.pid)
                    if rss is not None:
                        samples.append((time.time() - start, rss))

            sampler = threading.Thread(target=sample, daemon=True)
            before = admitted_histogram(base)
            sampler.start()
            connections = connections_per_slot * max_concurrent
            # Paced to `overload` times the capacity (refused requests come back at once, so
            # unpaced connections would offer hundreds of times it).
            # A connection's cycle is its pause plus the answer's time (about 2 / capacity
            # seconds for an admitted request, as with the two connections that measured it).
            capacity = max(capacity, 1.0)
            delay_ms = max(0.0, 1000.0 * (connections / (overload * capacity) - 2.0 / capacity))
            run = wrk(url, connections=connections, seconds=seconds, script=script, photo=photo,
                      delay_ms=delay_ms)
            stop.set()
            sampler.join()
            after = admitted_histogram(base)

            healthy = (
                server.poll() is None
                and get(f"{base}/ping")[0] == 200
                and post_photo(url, photo_bytes) == 200
            )
            # The first tenth is the server filling its queue and caches; the band is after it.
            steady = [rss for t, rss in samples if t >= seconds / 10] or [rss for _, rss in samples]
            statuses = run["statuses"]
            total = sum(statuses.values())
            return {
                "binary": str(bestiary_bin()),
                "seconds": round(run["seconds"], 1),
                "limits": {"max_concurrent_requests": max_concurrent, "max_queue": max_queue},
                "connections": connections,
                "capacity_rps": round(capacity, 1),
                "pacing_ms": round(delay_ms, 1),
                "offered_rps": round(total / run["seconds"], 1),
                "admitted_rps": round(statuses.get(200, 0) / run["seconds"], 1),
                "requests": total,
                "status_200": statuses.get(200, 0),
                "status_429": statuses.get(429, 0),
                "status_other": {k: v for k, v in statuses.items() if k not in (200, 429)},
                "missing_retry_after": run["missing_retry_after"],
                "socket_errors": run["errors"],
                "rss_mib": {
                    "min": round(min(steady) / 2**20, 1) if steady else None,
                    "max": round(max(steady) / 2**20, 1) if steady else None,
                    # A band that keeps rising is a leak; one that moves within itself is not.
                    "first_tenth_mean": mean_mib(steady[: max(1, len(steady) // 10)]),
                    "last_tenth_mean": mean_mib(steady[-max(1, len(steady) // 10):]),
                    "samples": len(samples),
                },
                "admitted_p50_s": quantile(before, after, 0.50),
                "admitted_p99_s": quantile(before, after, 0.99),
                "healthy_after": healthy,
            }
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


def problems(report: dict, rss_band_mib: float, p99_limit_s: float) -> list[str]:
    """The promises a soak report breaks, in words; empty when it keeps them all."""
    found = []
    if report["status_other"]:
        found.append(f"responses other than 200 and 429: {report['status_other']}")
    if report["missing_retry_after"]:
        found.append(f"{report['missing_retry_after']} responses 429 without Retry-After")
    if report["socket_errors"]["timeout"] or report["socket_errors"]["connect"]:
        found.append(f"socket errors: {report['socket_errors']}")
    if report["status_429"] == 0:
        found.append("no 429: the load never exceeded the server's limits")
    if report["status_200"] == 0:
        found.append("nothing was admitted")
    rss = report["rss_mib"]
    if rss["min"] is not None and rss["max"] - rss["min"] > rss_band_mib:
        found.append(f"resident memory moved {rss['max'] - rss['min']:.1f} MiB (band {rss_band_mib} MiB)")
    p99 = report["admitted_p99_s"]
    if p99 is None or p99 > p99_limit_s:
        found.append(f"p99 of admitted requests {p99} s (limit {p99_limit_s} s)")
    if not report["healthy_after"]:
        found.append("the server was not healthy afterwards")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--max-concurrent-requests", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--check", action="store_true", help="exit 1 when a promise is broken")
    parser.add_argument("--rss-band-mib", type=float, default=64.0)
    parser.add_argument("--p99-limit-s", type=float, default=5.0)
    args = parser.parse_args()
    report = soak(args.seconds, args.max_concurrent_requests, args.max_queue, args.overload)
    print(json.dumps(report, indent=2))
    found = problems(report, args.rss_band_mib, args.p99_limit_s)
    for problem in found:
        print(f"BROKEN: {problem}", file=sys.stderr)
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())
