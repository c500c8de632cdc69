"""Shared fixtures of the system tests: the built binary, servers on free loopback ports, photos.

The system tests run the real `bestiary` binary (and, through containers.py, its container image)
as users and operators do. They run after `cargo test --workspace` has built the binary
(`scripts/test` does both). When something they need is absent they skip with the reason —
unless BESTIARY_REQUIRE_SYSTEM=1 (set by .ci/run), where a missing prerequisite fails the run, so
CI can never pass on skipped tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
ANIMALS10 = SHARED / "data" / "animals10" / "images"


def require(condition: bool, reason: str) -> None:
    """Skips the test when `condition` is false, or fails it where CI demands every test run."""
    if condition:
        return
    if os.environ.get("BESTIARY_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"required for this run (BESTIARY_REQUIRE_SYSTEM=1): {reason}")
    pytest.skip(reason)


def bestiary_bin() -> Path:
    """The binary under test: $BESTIARY_BIN, else the debug build `cargo test` made."""
    path = Path(os.environ.get("BESTIARY_BIN", ROOT / "target" / "debug" / "bestiary"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it first (cargo build -p bestiary-cli, or scripts/test)")
    return path


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after `timeout` seconds; waits for the exit."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str,
    timeout: float = 60.0,
    proc: subprocess.Popen | None = None,
    exited: Callable[[], str | None] | None = None,
) -> None:
    """Polls `url` until it answers 200; fails early if `proc` exits or `exited()` says why the
    server is gone (a container's state)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} was ready")
        if exited is not None and (reason := exited()):
            raise AssertionError(reason)
        try:
            reply = requests.get(url, timeout=2)
            if reply.status_code == 200:
                return
            last = f"HTTP {reply.status_code}"
        except requests.RequestException as error:
            last = str(error)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout} s ({last})")


@contextlib.contextmanager
def serve(*args: str, env: dict[str, str] | None = None, log: Path | None = None):
    """Runs `bestiary serve` on a free loopback port; yields its base URL; stops it by SIGTERM."""
    port = free_port()
    environment = dict(os.environ, **(env or {}))
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(bestiary_bin()), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=environment,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/v2/health/ready", proc=proc)
        yield base
    finally:
        stop_process(proc)
        if log:
            out.close()


def animal_photos(per_class: int = 2) -> dict[str, list[Path]]:
    """Real labelled photos from ../shared (the built-in model's classes), a few per class."""
    require(ANIMALS10.is_dir(), f"{ANIMALS10} (shared photos) is absent")
    photos = {}
    for folder in sorted(p for p in ANIMALS10.iterdir() if p.is_dir()):
        photos[folder.name] = sorted(folder.iterdir())[:per_class]
    return photos


@pytest.fixture(scope="session")
def builtin_server(tmp_path_factory):
    """One server on the built-in model for the whole session (read-only tests share it)."""
    log = tmp_path_factory.mktemp("builtin-server") / "serve.log"
    with serve(log=log) as base:
        yield base


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server `.ci/run` started (BESTIARY_TEST_S3_*), else one of our own for this module."""
    # Imported here: s3_client itself imports this module.
    from s3_client import S3, SeaweedFs

    found = S3.from_env(dict(os.environ))
    if found is not None:
        yield found
        return
    binary = ROOT / "target" / "debug" / "seaweedfs"
    require(
        binary.is_file(),
        f"{binary} is missing and BESTIARY_TEST_S3_ENDPOINT is unset: cargo build -p bestiary-testkit --bin seaweedfs",
    )
    server = SeaweedFs(binary, tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.wait()
    finally:
        server.stop()
