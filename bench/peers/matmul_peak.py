"""Figure 7: the machine's measured fp32 matrix-multiply peak: numpy's (OpenBLAS) and PyTorch's
sgemm on square matrices with a fixed thread count, best of several timed runs each. Prints JSON."""

import argparse
import json
import os
import time


def best_gflops(matmul, n, seconds):
    matmul()  # warm-up: thread start-up, packing buffers
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        matmul()
        best = max(best, 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    import numpy as np
    from threadpoolctl import threadpool_limits, threadpool_info

    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.size, a.size), dtype=np.float32)
    y = rng.standard_normal((a.size, a.size), dtype=np.float32)
    with threadpool_limits(a.threads):
        blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}" for i in threadpool_info()]
        numpy_gflops = best_gflops(lambda: x @ y, a.size, a.seconds)
    import torch

    torch.set_num_threads(a.threads)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    torch_gflops = best_gflops(lambda: torch.mm(tx, ty), a.size, a.seconds)
    print(json.dumps({
        "threads": a.threads,
        "size": a.size,
        "numpy_gflops": numpy_gflops,
        "numpy_blas": blas,
        "torch_gflops": torch_gflops,
        "peak_gflops": max(numpy_gflops, torch_gflops),
    }))


if __name__ == "__main__":
    main()
