"""Running and stopping Bestiary containers for the scale-out system tests.

The image is `bestiary:latest` built by scripts/docker-image from the binary `cargo test` built
(or $BESTIARY_IMAGE, an image built already), once per test session. Every container a test
starts carries the label `bestiary-system-test` and is removed in the test's `finally`, whatever
happened. Traffic stays on loopback: servers publish their port on 127.0.0.1 only, and bulk
containers share the host's network to reach the S3 server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from conftest import ROOT, bestiary_bin, require, wait_ready

LABEL = "bestiary-system-test"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the docker client; with `check`, a failure raises with what docker printed."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def require_docker() -> None:
    require(shutil.which("docker") is not None, "the docker client is not installed")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        info = None
    require(
        info is not None and info.returncode == 0,
        f"the Docker daemon is not reachable: {info.stderr.strip() if info else 'docker info timed out'}",
    )


@functools.cache
def _built_image() -> str:
    """Builds the image once per session (both test modules import the fixture)."""
    given = os.environ.get("BESTIARY_IMAGE")
    if given:
        found = docker("image", "inspect", given, check=False)
        require(found.returncode == 0, f"BESTIARY_IMAGE={given} is not an image here")
        return given
    binary = bestiary_bin()
    build = subprocess.run(
        [str(ROOT / "scripts" / "docker-image")],
        env=dict(os.environ, BESTIARY_BIN=str(binary), IMAGE="bestiary:latest"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    require(build.returncode == 0, f"scripts/docker-image failed: {build.stderr[-2000:]}")
    return build.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def bestiary_image() -> str:
    """The Bestiary image under test (built from target/debug/bestiary unless $BESTIARY_IMAGE)."""
    require_docker()
    return _built_image()


@dataclass
class Container:
    id: str
    name: str

    def port(self, inner: int = 8080) -> int:
        """The 127.0.0.1 port `inner` is published on."""
        out = docker("port", self.id, f"{inner}/tcp").stdout.split()
        for line in out:
            host, _, port = line.rpartition(":")
            if host == "127.0.0.1":
                return int(port)
        raise AssertionError(f"{self.name}: {inner} is not published on 127.0.0.1 ({out})")

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.id).stdout)

    def logs(self) -> str:
        out = docker("logs", self.id, check=False)
        return out.stdout + out.stderr

    def stdout(self) -> str:
        return docker("logs", self.id, check=False).stdout

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        docker("kill", "--signal", "KILL", self.id)

    def stop(self, timeout: int = 40) -> None:
        """SIGTERM, then SIGKILL after `timeout` s; returns once the container has exited."""
        docker("stop", "--time", str(timeout), self.id, timeout=timeout + 30)

    def wait(self, timeout: float = 300) -> int:
        return int(docker("wait", self.id, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.id, check=False)


def run_container(image: str, *args: str, name: str, options: list[str] = ()) -> Container:
    """`docker run -d` with the test label; `options` go before the image, `args` after it."""
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    out = docker("run", "--detach", "--label", LABEL, "--name", unique, *options, image, *args)
    return Container(out.stdout.strip(), unique)


def serve_container(image: str, *args: str, name: str, options: list[str] = ()) -> Container:
    """`IMAGE serve ARGS` with its port 8080 published on a free 127.0.0.1 port."""
    return run_container(image, "serve", *args, name=name, options=["--publish", "127.0.0.1::8080", *options])


def wait_container_ready(container: Container, timeout: float = 90) -> str:
    """Polls /v2/health/ready through the published port; returns the base URL."""
    base = f"http://127.0.0.1:{container.port()}"

    def exited() -> str | None:
        state = container.state()
        if state.get("Running"):
            return None
        return f"{container.name} exited ({state.get('ExitCode')}):\n{container.logs()[-3000:]}"

    try:
        wait_ready(f"{base}/v2/health/ready", timeout=timeout, exited=exited)
    except TimeoutError as error:
        raise TimeoutError(f"{error}:\n{container.logs()[-3000:]}") from None
    return base


@contextlib.contextmanager
def removed_at_exit():
    """Collects containers; removes every one of them on the way out, whatever happened."""
    started: list[Container] = []
    try:
        yield started
    finally:
        for container in started:
            container.remove()
