"""The KEDA scale-out signal, for real: Prometheus scrapes two servers under wrk load and the ScaledObject's query crosses its threshold.

A real Prometheus (Debian package) on a loopback port, with its own configuration and storage,
scrapes two `bestiary serve` processes every second, with the labels the ServiceMonitor gives
pods in the cluster (namespace, service). wrk POSTs a JPEG to both. The test reads the query and
threshold from the ScaledObject as kustomize renders it (deploy/kubernetes/overlays/keda) and asks
Prometheus' HTTP API for it: divided by the number of servers — what KEDA compares with the
threshold for `metricType: AverageValue` — it must rise above the threshold under load (KEDA would
add pods) and fall below it once the load stops (KEDA would not). The query averages over one
minute, so rising and falling take about a minute together.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from conftest import ANIMALS10, free_port, require, serve, stop_process
from test_kubernetes import one

SERVERS = 2
WRK_LUA = """
local f = assert(io.open(os.getenv("BESTIARY_PHOTO"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"
"""


def photo(tmp: Path) -> Path:
    """A real photo from ../shared when there, else a generated JPEG."""
    if ANIMALS10.is_dir():
        found = sorted(ANIMALS10.glob("*/*.jp*g"))
        if found:
            return found[len(found) // 2]
    from PIL import Image

    path = tmp / "photo.jpg"
    Image.new("RGB", (300, 225), (120, 160, 90)).save(path, format="JPEG", quality=90)
    return path


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[str], labels: dict[str, str]):
    """Prometheus on a free loopback port scraping `targets` every second; yields its URL."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    require(Path(binary).is_file(), "prometheus is absent (scripts/install-system-packages installs it)")
    port = free_port()
    config = tmp / "prometheus.yml"
    quoted = ", ".join(f"'{t}'" for t in targets)
    label_lines = "\n".join(f"          {k}: '{v}'" for k, v in labels.items())
    config.write_text(
        f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: bestiary
    metrics_path: /metrics
    static_configs:
      - targets: [{quoted}]
        labels:
{label_lines}
"""
    )
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            time.sleep(0.2)
        yield base
    finally:
        stop_process(proc, timeout=15)
        log.close()


def query(base: str, promql: str) -> float | None:
    """The instant value of a scalar-like query, None while it has no sample."""
    reply = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    reply.raise_for_status()
    body = reply.json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


@contextlib.contextmanager
def wrk_load(urls: list[str], clients: int, tmp: Path, photo_path: Path, seconds: int):
    """One wrk per server, `clients` connections each, until the block ends."""
    wrk = shutil.which("wrk")
    require(wrk is not None, "wrk is absent (scripts/install-system-packages installs it)")
    script = tmp / "post.lua"
    script.write_text(WRK_LUA)
    env = dict(os.environ, BESTIARY_PHOTO=str(photo_path))
    procs = [
        subprocess.Popen(
            [wrk, "-t", "1", "-c", str(clients), "-d", f"{seconds}s", "--timeout", "10s", "-s", str(script), url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for url in urls
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_scaled_object_query_rises_above_its_threshold_under_load_and_falls_after(tmp_path):
    require(shutil.which("prometheus") is not None, "prometheus is absent (scripts/install-system-packages)")
    require(shutil.which("wrk") is not None, "wrk is absent (scripts/install-system-packages)")
    started = time.monotonic()
    scaled = one("overlays/keda", "ScaledObject")
    service = one("overlays/keda", "Service")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metricType"] == "AverageValue"
    promql = trigger["metadata"]["query"]
    threshold = float(trigger["metadata"]["threshold"])
    # The labels the ServiceMonitor puts on the pods' series in the cluster.
    labels = {"namespace": service["metadata"]["namespace"], "service": service["metadata"]["name"]}
    # Closed-loop clients keep about one image each in flight: three times the threshold per
    # server crosses it after about a third of the query's one-minute window.
    clients = max(2, math.ceil(3 * threshold))
    image = photo(tmp_path)

    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(serve()) for _ in range(SERVERS)]
        targets = [b.removeprefix("http://") for b in bases]
        prom = stack.enter_context(prometheus(tmp_path, targets, labels))

        # Both targets scraped twice (rate() needs two samples) before the load starts.
        deadline = time.monotonic() + 20
        selector = re.search(r"bestiary_\w+\{[^}]*\}", promql).group(0)
        while query(prom, f"count({selector})") != SERVERS or (idle := query(prom, promql)) is None:
            assert time.monotonic() < deadline, "Prometheus does not see both servers"
            time.sleep(0.5)
        assert idle / SERVERS < threshold, idle

        under_load = []
        with wrk_load([f"{b}/v1/classify" for b in bases], clients, tmp_path, image, seconds=50) as procs:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                time.sleep(1)
                assert all(p.poll() is None for p in procs), "wrk stopped early"
                value = query(prom, promql)
                under_load.append(value)
                # Two evaluations in a row above: KEDA would scale out.
                if len(under_load) >= 2 and all(v is not None and v / SERVERS > threshold for v in under_load[-2:]):
                    break
            else:
                raise AssertionError(f"{promql} per server never rose above {threshold}: {under_load}")
        peak = max(v for v in under_load if v is not None)
        # The servers answered the load.
        for base in bases:
            metrics = requests.get(f"{base}/metrics", timeout=5).text
            assert 'bestiary_requests_total{route="/v1/classify",status="200"}' in metrics

        after = []
        deadline = time.monotonic() + 65
        while time.monotonic() < deadline:
            time.sleep(1)
            value = query(prom, promql)
            after.append(value)
            if value is not None and value / SERVERS < threshold:
                break
        else:
            raise AssertionError(f"{promql} per server stayed above {threshold} after the load: {after}")

    elapsed = time.monotonic() - started
    print(
        f"\nthreshold {threshold} per pod, {clients} clients per server; query per server: idle "
        f"{idle / SERVERS:.2f}, rose above after {len(under_load)} s to {peak / SERVERS:.2f}, "
        f"fell to {after[-1] / SERVERS:.2f} {len(after)} s after the load; whole test {elapsed:.0f} s"
    )
    assert elapsed < 115
