"""Bestiary containers behind a real load balancer (Debian's nginx), under load from a real client.

Three `bestiary:latest` containers publish their port on 127.0.0.1; nginx, run by the test as an
unprivileged process on a free loopback port with its own prefix, balances over them with
keepalive connections and retries a request on the next server when one fails
(`proxy_next_upstream error timeout http_502 http_503 non_idempotent`). Classification is safe to
retry although it is a POST: the answer is a pure function of the photo and the model (no state
changes but the usage counters), so a request that a dying server never answered may be sent
again. Without `non_idempotent` nginx does not retry a POST once it was sent, and every request in
flight on a killed server (or on a keepalive connection a draining server just closed) would reach
the client as a 502.

The load is a pool of Python client threads that POST real photos to /v1/classify for the whole
test and record every response (status, version, error), so failures are counted exactly; nginx's
access log (with `$upstream_addr`/`$upstream_status`) says which requests were retried and where.

- A container killed with SIGKILL under load: zero failed requests, the ones in flight on it
  retried on the others.
- Every container replaced, one at a time, by one serving a new model version (start, ready, add
  to nginx, `docker stop` the old one, which drains, remove it from nginx): zero failed requests,
  and once the last old container is gone every answer names the new version.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from conftest import ROOT, animal_photos, free_port, require
from containers import bestiary_image, removed_at_exit, serve_container, wait_container_ready  # noqa: F401

SERVERS = 3
CLIENTS = 8
BUILTIN = ROOT / "models" / "animals"
# The version the replacement containers serve: the built-in model's files under a new version
# name, mounted into the new containers (what a deploy of a retrained model looks like to them).
NEW_VERSION = "20261202-090000-beef"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    require(found is not None, "nginx is not installed (scripts/install-system-packages installs nginx-light)")
    return found


class Nginx:
    """nginx on a free 127.0.0.1 port with its own prefix (config, logs, temp dirs, pid)."""

    def __init__(self, prefix: Path):
        self.binary = nginx_binary()
        self.prefix = prefix
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "logs" / "error.log"
        self.access_log = prefix / "logs" / "access.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.upstreams: list[int] = []

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log), *extra]

    def write(self, upstreams: list[int]) -> None:
        self.upstreams = list(upstreams)
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in upstreams)
        temp = self.prefix / "temp"
        # As root (CI containers), workers would run as `nobody`, who cannot enter pytest's
        # private temp folder; keep them as the user who started nginx.
        user = "user root root;" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"""{user}
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.error_log} notice;
events {{ worker_connections 1024; }}
http {{
    log_format balancer '$msec $status $request_time "$upstream_addr" "$upstream_status"';
    access_log {self.access_log} balancer;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    client_max_body_size 20m;
    client_body_buffer_size 1m;
    upstream bestiary {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://bestiary;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Classification is a pure function of photo and model: a POST that failed on one
            # server (connection refused or reset, 502, 503 while not ready) is safe to send to
            # the next. Not 429: that is back-pressure, and retrying it elsewhere would amplify it.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries {SERVERS + 1};
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""
        )
        check = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t: {check.stderr}"

    def start(self, upstreams: list[int]) -> None:
        self.write(upstreams)
        self.proc = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"nginx exited: {self.error_log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"nginx not listening: {self.error_log.read_text()}"
                time.sleep(0.05)

    def workers_started(self) -> int:
        return self.error_log.read_text().count("start worker process ")

    def reload(self, upstreams: list[int]) -> None:
        """New upstreams, by `nginx -s reload`; returns once the new worker is up."""
        before = self.workers_started()
        self.write(upstreams)
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while self.workers_started() <= before:
            assert "[emerg]" not in self.error_log.read_text(), self.error_log.read_text()
            assert time.monotonic() < deadline, f"nginx did not reload: {self.error_log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finishes what is in flight
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> list[LogLine]:
        """The access log: one line per request the balancer answered."""
        lines = []
        for text in self.access_log.read_text().splitlines():
            msec, status, _, rest = text.split(" ", 3)
            addresses, statuses = rest.split('" "')
            lines.append(
                LogLine(
                    float(msec),
                    int(status),
                    [a.strip() for a in addresses.strip('"').split(",")],
                    [s.strip() for s in statuses.strip('"').split(",")],
                )
            )
        return lines


@dataclass
class LogLine:
    time: float
    status: int
    upstreams: list[str]  # every server tried, in order
    upstream_statuses: list[str]

    @property
    def retried(self) -> bool:
        return len(self.upstreams) > 1


@dataclass
class Response:
    sent: float  # time.time(), comparable with nginx's $msec
    done: float
    status: int | None  # None: no HTTP answer at all
    version: str | None = None
    error: str | None = None


@dataclass
class Load:
    """CLIENTS threads POSTing photos to /v1/classify until stopped; every response recorded."""

    url: str
    photos: list[bytes]
    clients: int = CLIENTS
    responses: list[Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _client(self, index: int) -> None:
        count = index
        while not self._stop.is_set():
            photo = self.photos[count % len(self.photos)]
            count += 1
            sent = time.time()
            try:
                # A new connection each time: failures counted are the balancer's and servers',
                # never a race of the client's own keepalive with nginx's reload.
                reply = requests.post(
                    f"{self.url}/v1/classify",
                    data=photo,
                    headers={"Content-Type": "image/jpeg", "Connection": "close"},
                    timeout=60,
                )
            except requests.RequestException as error:
                self.responses.append(Response(sent, time.time(), None, error=repr(error)))
                continue
            version = None
            if reply.status_code == 200:
                version = reply.json()["predictions"][0]["version"]
            self.responses.append(
                Response(sent, time.time(), reply.status_code, version, None if version else reply.text[:300])
            )

    def wait_for(self, answered: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(r.status == 200 for r in self.responses) < answered:
            assert time.monotonic() < deadline, f"only {len(self.responses)} answers in {timeout} s"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def failures(self) -> list[Response]:
        return [r for r in self.responses if r.status != 200]

    def rate(self, since: float, until: float) -> float:
        done = [r for r in self.responses if since <= r.done < until and r.status == 200]
        return len(done) / max(until - since, 1e-9)


def photos() -> list[bytes]:
    """One real photo of each class."""
    return [paths[0].read_bytes() for paths in animal_photos(per_class=1).values()]


def start_servers(image: str, count: int, started: list, *args: str, options: list[str] = (), name: str = "lb"):
    containers = [serve_container(image, *args, name=f"{name}-{i}", options=list(options)) for i in range(count)]
    started.extend(containers)
    for container in containers:
        wait_container_ready(container)
    return containers


def report(title: str, numbers: dict) -> None:
    print(f"\n{title}: " + json.dumps(numbers, indent=1))


def test_a_container_killed_under_load_loses_no_request(bestiary_image, tmp_path):  # noqa: F811
    nginx = Nginx(tmp_path / "nginx")
    load = None
    timings = {}
    with removed_at_exit() as started:
        t0 = time.monotonic()
        servers = start_servers(bestiary_image, SERVERS, started)
        timings["servers_ready_s"] = round(time.monotonic() - t0, 2)
        ports = [server.port() for server in servers]
        try:
            nginx.start(ports)
            load = Load(nginx.url, photos()).start()
            t1 = time.monotonic()
            load.wait_for(answered=60)
            timings["warm_s"] = round(time.monotonic() - t1, 2)
            time.sleep(3)  # steady load on all three before the kill
            victim = servers[0]
            killed_at = time.time()
            victim.kill()
            time.sleep(8)  # the remaining two carry the load, nginx skipping the dead one
            stopped_at = time.time()
            load.stop()
        finally:
            if load is not None:
                load.stop()
            nginx.stop()
        assert not victim.state()["Running"]

    responses = load.responses
    failures = load.failures()
    log = nginx.log()
    victim_address = f"127.0.0.1:{ports[0]}"
    retried = [line for line in log if line.retried]
    # Requests sent to the killed server that it never answered: in flight on it at the kill, or
    # sent to it before nginx saw it was gone. Each was retried on another server.
    lost_on_victim = [line for line in log if victim_address in line.upstreams[:-1]]
    after = [r for r in responses if r.sent >= killed_at]
    numbers = {
        "requests": len(responses),
        "answered_200": len(responses) - len(failures),
        "failures": len(failures),
        "requests_after_kill": len(after),
        "retried_by_nginx": len(retried),
        "unanswered_on_killed_server_then_retried": len(lost_on_victim),
        "upstream_statuses_of_retried": sorted({", ".join(line.upstream_statuses) for line in retried}),
        "req_per_s_before_kill": round(load.rate(killed_at - 3, killed_at), 1),
        "req_per_s_after_kill": round(load.rate(killed_at + 1, stopped_at), 1),
        **timings,
    }
    report("SIGKILL of one of three containers under load", numbers)

    # Every request the clients sent got an answer from the balancer, and nginx logged each once.
    assert len(log) == len(responses), (len(log), len(responses))
    assert failures == [], f"{len(failures)} failed: {failures[:5]}"
    # The requests the killed server held were not lost but retried (there were some: eight
    # clients over three servers keep two or three in flight on each).
    assert lost_on_victim, "nothing was in flight on the killed server"
    assert all(line.status == 200 for line in retried)
    assert len(failures) <= len(lost_on_victim)
    # After the kill, the others answered everything.
    assert len(after) >= 20 and all(r.status == 200 for r in after)
    late = [line for line in log if line.time > killed_at + 6]
    assert late and all(line.upstreams[-1] != victim_address for line in late)


def new_model_version(root: Path) -> Path:
    """The built-in model's files as version NEW_VERSION of `animals`, with `latest` pointing to it."""
    (version,) = [p for p in BUILTIN.iterdir() if p.is_dir()]
    target = root / "animals" / NEW_VERSION
    target.mkdir(parents=True)
    metadata = json.loads((version / "model.json").read_text())
    metadata["version"] = NEW_VERSION
    (target / "model.json").write_text(json.dumps(metadata, indent=2))
    for file in metadata["files"]:
        shutil.copyfile(version / file, target / file)
    (root / "animals" / "latest").write_text(json.dumps({"version": NEW_VERSION}))
    # The container runs as uid 10001; pytest's temp folders are private to their owner.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_a_rolling_replacement_with_a_new_version_fails_no_request(bestiary_image, tmp_path):  # noqa: F811
    models = new_model_version(tmp_path / "models")
    nginx = Nginx(tmp_path / "nginx")
    load = None
    steps = []
    exit_codes = []
    with removed_at_exit() as started:
        olds = start_servers(bestiary_image, SERVERS, started, name="lb-old")
        ports = {old.id: old.port() for old in olds}
        try:
            nginx.start(list(ports.values()))
            load = Load(nginx.url, photos()).start()
            load.wait_for(answered=30)
            old_version = next(r.version for r in load.responses if r.version)
            rolling_started = time.time()
            for index, old in enumerate(olds):
                step = {"replaced": index}
                t0 = time.monotonic()
                new = serve_container(
                    bestiary_image,
                    "--model",
                    "/models/animals",
                    name=f"lb-new-{index}",
                    options=["--volume", f"{models}:/models:ro"],
                )
                started.append(new)
                wait_container_ready(new)
                step["new_ready_s"] = round(time.monotonic() - t0, 2)
                ports[new.id] = new.port()
                t1 = time.monotonic()
                nginx.reload(list(ports.values()))
                step["added_to_nginx_s"] = round(time.monotonic() - t1, 2)
                t2 = time.monotonic()
                old.stop(timeout=40)  # SIGTERM: stop accepting, drain, exit
                step["old_drained_and_exited_s"] = round(time.monotonic() - t2, 2)
                exit_codes.append(old.state()["ExitCode"])
                del ports[old.id]
                t3 = time.monotonic()
                nginx.reload(list(ports.values()))
                step["removed_from_nginx_s"] = round(time.monotonic() - t3, 2)
                steps.append(step)
            all_replaced = time.time()
            time.sleep(3)
            stopped_at = time.time()
            load.stop()
        finally:
            if load is not None:
                load.stop()
            nginx.stop()

    responses = load.responses
    failures = load.failures()
    log = nginx.log()
    during = [r for r in responses if rolling_started <= r.sent < all_replaced]
    after = [r for r in responses if r.sent >= all_replaced]
    numbers = {
        "requests": len(responses),
        "failures": len(failures),
        "retried_by_nginx": sum(line.retried for line in log),
        "requests_during_rolling": len(during),
        "during_rolling_by_version": {
            v: sum(r.version == v for r in during) for v in sorted({r.version for r in during if r.version})
        },
        "requests_after_last_old_exited": len(after),
        "rolling_s": round(all_replaced - rolling_started, 2),
        "req_per_s_during_rolling": round(load.rate(rolling_started, all_replaced), 1),
        "req_per_s_after": round(load.rate(all_replaced, stopped_at), 1),
        "old_exit_codes": exit_codes,
        "steps": steps,
    }
    report(f"rolling replacement {old_version} → {NEW_VERSION}", numbers)

    assert old_version != NEW_VERSION
    assert len(log) == len(responses), (len(log), len(responses))
    assert failures == [], f"{len(failures)} failed: {failures[:5]}"
    # Each old server exited by itself after draining (0), not killed after the timeout (137).
    assert exit_codes == [0] * SERVERS
    # Both versions answered while the containers were replaced; afterwards only the new one.
    assert {old_version, NEW_VERSION} <= {r.version for r in during}
    assert len(after) >= 10
    assert {r.version for r in after} == {NEW_VERSION}
