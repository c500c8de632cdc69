"""Starting and stopping the processes a figure talks to (HTTP servers, SeaweedFS) by PID, and
measuring a process tree's resident memory."""

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import psutil

from .common import ROOT, log


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background:
    """A process started in its own session, stopped (SIGTERM, then SIGKILL) with its children."""

    def __init__(self, name, cmd, env=None, cwd=ROOT):
        self.name = name
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=cwd, env=full_env, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def rss_mb(self):
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
        except psutil.NoSuchProcess:
            return None

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        os.unlink(self.log.name)


def wait_http(server, url, timeout=120):
    """Waits until `url` answers 200; returns the seconds since the server was started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited: {server.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - server.started
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{server.name} not ready at {url} after {timeout} s: {server.output()}")


def post(url, body, content_type):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def seaweedfs():
    """The project's test S3 server (crates/testkit's `seaweedfs` launcher, as .ci/run starts it):
    returns (Background, env dict)."""
    launcher = None
    for profile in ("release", "debug"):
        candidate = os.path.join(ROOT, "target", profile, "seaweedfs")
        if os.path.exists(candidate):
            launcher = candidate
            break
    if launcher is None:
        log("  building the SeaweedFS launcher (cargo build -p bestiary-testkit --bin seaweedfs)")
        subprocess.run(["cargo", "build", "--quiet", "-p", "bestiary-testkit", "--bin", "seaweedfs"], cwd=ROOT, check=True)
        launcher = os.path.join(ROOT, "target", "debug", "seaweedfs")
    subprocess.run([os.path.join(ROOT, "scripts", "install-tools")], check=True)
    env_file = tempfile.mktemp(prefix="bench-s3-", suffix=".env")
    server = Background("seaweedfs", [launcher, env_file])
    deadline = time.monotonic() + 180
    while not os.path.exists(env_file):
        if not server.alive() or time.monotonic() > deadline:
            output = server.output()
            server.stop()
            raise RuntimeError(f"SeaweedFS did not start: {output}")
        time.sleep(0.5)
    env = {}
    with open(env_file) as f:
        for line in f:
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                env[key] = value.strip("'\"")
    os.unlink(env_file)
    return server, env
