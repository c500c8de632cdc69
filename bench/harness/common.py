"""Shared plumbing of the harness: paths, running a process (timestamped output lines, wall time,
peak RSS, CPU time), A/B alternation of contenders, and medians."""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
SHARED = os.environ.get("BESTIARY_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
WORK = os.path.join(BENCH, "work")
PEERS = os.path.join(BENCH, "peers")
RESULTS = os.path.join(BENCH, "results")
BESTIARY = os.environ.get("BESTIARY_BIN", os.path.join(ROOT, "target", "release", "bestiary"))
PYTHON = sys.executable
THREADS = os.cpu_count() or 1


def log(message):
    print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    """One finished process: its output lines with the second each arrived, and its costs."""

    cmd: list
    returncode: int
    wall: float
    lines: list = field(default_factory=list)  # (seconds since start, line)
    stderr: str = ""
    max_rss_mb: float = 0.0
    cpu_seconds: float = 0.0
    killed: bool = False

    @property
    def ok(self):
        return self.returncode == 0 or self.killed

    def fail_reason(self):
        tail = "\n".join(self.stderr.strip().splitlines()[-8:])
        return f"exit status {self.returncode} of {' '.join(map(str, self.cmd[:3]))}…: {tail}"


def run(cmd, *, env=None, cwd=ROOT, timeout=None, on_line=None):
    """Runs `cmd` to its end (or until `on_line` returns True, or `timeout` seconds pass, when it
    is stopped with SIGTERM then SIGKILL). Peak RSS and CPU time come from wait4, so they are
    this process's own (not its children's)."""
    cmd = [str(c) for c in cmd]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env = {k: str(v) for k, v in full_env.items() if v is not None}  # None unsets
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, cwd=cwd, env=full_env
        )
        state = {"killed": False, "reaped": False}

        def stop():
            # os.kill, not Popen's methods: those may reap the child, and wait4 below must.
            state["killed"] = True
            for sig, pause in ((signal.SIGTERM, 3), (signal.SIGKILL, 0)):
                if state["reaped"]:
                    return
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    return
                time.sleep(pause)

        timer = threading.Timer(timeout, stop) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        lines = []
        for line in proc.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            if on_line and on_line(line) and not state["killed"]:
                threading.Thread(target=stop, daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
        state["reaped"] = True
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    return Run(
        cmd=cmd,
        returncode=proc.returncode,
        wall=wall,
        lines=lines,
        stderr=stderr,
        max_rss_mb=usage.ru_maxrss / 1024,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        killed=state["killed"],
    )


def epoch_records(result):
    """(seconds since launch, record) for every JSON line of a finished run that reports an
    epoch: `bestiary train --json` and the PyTorch peers print one per epoch."""
    for seconds, line in result.lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            yield seconds, record


# Environment of every peer process, set by run.py (OMP_WAIT_POLICY, see README).
PEER_ENV = {}


def peer(script, *args, env=None, **kwargs):
    """Runs one of bench/peers/*.py with the venv's Python."""
    return run([PYTHON, os.path.join(PEERS, script), *args], env={**PEER_ENV, **(env or {})}, **kwargs)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Contender:
    """One side of a comparison: `measure(round)` returns a number (or raises)."""

    def __init__(self, name, side, measure):
        self.name, self.side, self.measure = name, side, measure
        self.samples, self.errors = [], []


def alternate(contenders, rounds, label):
    """Runs the contenders in turn, A B C A B C …, `rounds` times, so slow drifts of the machine
    (other jobs, thermal state) hit every side alike. A contender that fails keeps its error and
    is not run again."""
    for r in range(rounds):
        for c in contenders:
            if c.errors:
                continue
            started = time.monotonic()
            try:
                value = c.measure(r)
            except Exception as error:  # noqa: BLE001 - reported in the results, not fatal
                c.errors.append(str(error))
                log(f"  [{label}] {c.name}: FAILED: {str(error)[:400]}")
                continue
            c.samples.append(value)
            log(f"  [{label}] round {r + 1}/{rounds} {c.name}: {fmt(value)} ({time.monotonic() - started:.0f} s)")
    return contenders


def fmt(value):
    if value is None:
        return "–"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def side(contender, key=None):
    """The summary of one contender: name, samples, median (of `key` when samples are dicts)."""
    samples = [s[key] if key else s for s in contender.samples]
    return {
        "name": contender.name,
        "samples": samples,
        "median": median(samples),
        "error": contender.errors[0] if contender.errors else None,
    }


def row(figure, workload, settings, metric, unit, bestiary, peer_side, higher_is_better=True, **extra):
    """One line of the results table: Bestiary against one peer on one workload. `ratio` is
    Bestiary's advantage (>1: Bestiary better): speed ratio, or the peer's time (or memory)
    over Bestiary's for lower-is-better metrics."""
    b, p = bestiary["median"], peer_side["median"]
    ratio = None
    if b and p:
        ratio = b / p if higher_is_better else p / b
    return {
        "figure": figure,
        "workload": workload,
        "settings": settings,
        "metric": metric,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "bestiary": bestiary,
        "peer": peer_side,
        "ratio": ratio,
        **extra,
    }


def measurement(figure, workload, settings, metric, unit, value=None, error=None, detail=None, **extra):
    """One line of a table of figures that have no peer (accuracy, calibration error, AUROC):
    `value` measured in this run, or None with `error` saying why; `detail` is shown beside it
    (counts, spreads). `ratio` is None, so the chart and the ratio columns leave it out."""
    return {
        "figure": figure,
        "workload": workload,
        "settings": settings,
        "metric": metric,
        "unit": unit,
        "kind": "measurement",
        "value": value,
        "error": error,
        "detail": detail,
        "ratio": None,
        **extra,
    }
