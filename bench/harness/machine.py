"""What machine and software produced the numbers: CPU model, cores, memory, kernel, and the
versions of Bestiary and every peer."""

import os
import platform
import subprocess

from .common import BENCH, BESTIARY, PYTHON, ROOT


def _cmd(args, cwd=ROOT):
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def _cpu_model():
    lscpu = _cmd(["lscpu"]) or ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip()
    flags = fields.get("Flags", "")
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512vnni", "amx_tile") if f in flags.split()]
    return {
        "model": model,
        "vendor": fields.get("Vendor ID", "").strip(),
        "family": fields.get("CPU family", "").strip(),
        "model_number": fields.get("Model", "").strip(),
        "mhz": fields.get("CPU MHz", fields.get("CPU max MHz", "")).strip(),
        "threads_per_core": fields.get("Thread(s) per core", "").strip(),
        "simd": simd,
        "hypervisor": fields.get("Hypervisor vendor", "").strip(),
    }


def _mem_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def describe():
    import importlib.metadata as md

    def version(package):
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    cpu = _cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "versions": {
            "bestiary": _cmd([BESTIARY, "--version"]),
            "bestiary_commit": _cmd(["git", "rev-parse", "--short", "HEAD"]),
            "bestiary_worktree_dirty": bool(_cmd(["git", "status", "--porcelain", "--untracked-files=no"])),
            "rustc": _cmd(["rustc", "--version"]),
            "python": platform.python_version(),
            "torch": version("torch"),
            "torchvision": version("torchvision"),
            "onnxruntime": version("onnxruntime"),
            "numpy": version("numpy"),
            "pillow": version("pillow"),
            "fastapi": version("fastapi"),
            "uvicorn": version("uvicorn"),
            "boto3": version("boto3"),
            "oha": _cmd([os.path.join(BENCH, ".tools", "bin", "oha"), "--version"]),
            "python_executable": PYTHON,
        },
    }


def one_line(machine):
    cpu = machine["cpu"]
    return (f"{cpu['model'] or cpu['vendor']} (family {cpu['family']} model {cpu['model_number']}, "
            f"{'/'.join(cpu['simd'])}), {machine['cores']} vCPUs, {machine['memory_gib']} GiB, "
            f"Linux {machine['kernel']}")
