"""Figure 7: the machine's measured fp32 matrix-multiply peak (numpy/OpenBLAS and PyTorch sgemm
at the benchmark's thread count, the better of the two), against which every throughput row's
GFLOP/s is stated (model FLOPs per image from peers/flops.py times images per second).
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some machines for old OpenBLAS builds, are unset
for this measurement so that OpenBLAS picks its best kernel for the CPU."""

import json

from .common import log, peer


def measure(cfg):
    size, seconds = (1024, 1.0) if cfg.quick else (2048, 5.0)
    best = None
    for _ in range(1 if cfg.quick else 3):
        result = peer("matmul_peak.py", "--threads", cfg.threads, "--size", size, "--seconds", seconds,
                      env={"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None})
        if not result.ok:
            raise RuntimeError(result.fail_reason())
        sample = json.loads(result.lines[-1][1])
        if best is None or sample["peak_gflops"] > best["peak_gflops"]:
            best = sample
    log(f"  peak: {best['peak_gflops']:.1f} GFLOP/s fp32 (numpy {best['numpy_gflops']:.1f} via {best['numpy_blas']}, "
        f"torch {best['torch_gflops']:.1f}) at {cfg.threads} threads, {size}x{size}")
    return best


class Flops:
    """FLOPs per image of a network at an input size, counted once per run by peers/flops.py."""

    def __init__(self):
        self.cache = {}

    def __call__(self, arch, size):
        key = (arch, size)
        if key not in self.cache:
            result = peer("flops.py", "--arch", arch, "--image-size", size)
            if not result.ok:
                raise RuntimeError(result.fail_reason())
            self.cache[key] = json.loads(result.lines[-1][1])
        return self.cache[key]
