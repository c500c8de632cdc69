"""Figure 5: end-to-end serving, JPEG bytes in and JSON out over HTTP: `bestiary serve` against
FastAPI + Pillow + onnxruntime under uvicorn (one worker per core), both on the same ONNX model
(the built-in animal model's version folder) and the same photo, loaded by `oha` at 1, 8 and 64
concurrent clients for a fixed time each. Both servers run side by side; the load alternates
between them. The load generator runs on the same cores, alike for both."""

import json
import os

from . import servers
from .common import BENCH, BESTIARY, PEERS, ROOT, Contender, alternate, log, row, run, side
from .fig_engine import version_dir

OHA = os.path.join(BENCH, ".tools", "bin", "oha")


def photo():
    from .common import SHARED

    folder = os.path.join(SHARED, "data", "animals10", "images", "cat")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def load(url, path, clients, seconds):
    result = run([OHA, "-z", f"{seconds}s", "-w", "-c", clients, "-m", "POST", "-T", "image/jpeg", "-D", path,
                  "--no-tui", "--output-format", "json", url])
    if result.returncode != 0:
        raise RuntimeError(result.fail_reason())
    report = json.loads("\n".join(line for _, line in result.lines))
    summary = report["summary"]
    codes = report.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    if ok == 0 or summary.get("successRate", 0) < 0.99 or set(codes) - {"200"}:
        raise RuntimeError(f"unsuccessful responses: {codes}, errors {report.get('errorDistribution')}")
    p = report["latencyPercentiles"]
    return {"rps": summary["requestsPerSec"], "p50_ms": p["p50"] * 1e3, "p99_ms": p["p99"] * 1e3, "requests": ok}


def figure(cfg, ctx):
    if not os.path.exists(OHA):
        raise RuntimeError(f"{OHA} is missing: run bench/setup")
    model_dir = version_dir(os.path.join(ROOT, "models", "animals"))
    image = photo()
    seconds = 3 if cfg.quick else 10
    workers = cfg.threads
    started = []
    try:
        port_a = servers.free_port()
        a_server = servers.Background("bestiary-serve", [
            BESTIARY, "serve", "--model", model_dir, "--host", "127.0.0.1", "--port", port_a,
            "--model-poll-interval", "0", "--quiet"], env=cfg.bestiary_env)
        started.append(a_server)
        # One server starts while the other waits, so neither start-up slows the other.
        ready_s = {a_server.name: servers.wait_http(a_server, f"http://127.0.0.1:{port_a}/ping")}
        port_b = servers.free_port()
        b_server = servers.Background("fastapi", [
            os.path.join(os.path.dirname(cfg.python), "uvicorn"), "fastapi_server:app", "--app-dir", PEERS,
            "--host", "127.0.0.1", "--port", port_b, "--workers", workers, "--log-level", "warning",
            "--no-access-log"], env={"BENCH_MODEL_DIR": model_dir, "BENCH_ORT_THREADS": str(max(1, cfg.threads // workers))})
        started.append(b_server)
        ready_s[b_server.name] = servers.wait_http(b_server, f"http://127.0.0.1:{port_b}/ping")
        log(f"  ready after: {ready_s}")
        urls = {}
        for server, port in ((a_server, port_a), (b_server, port_b)):
            urls[server.name] = f"http://127.0.0.1:{port}/v1/classify"
        answers = {}
        with open(image, "rb") as f:
            body = f.read()
        for name, url in urls.items():
            for _ in range(5):  # warm-up
                status, payload = servers.post(url, body, "image/jpeg")
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {payload[:300]!r}")
            answer = json.loads(payload)
            answer = answer.get("predictions", [answer])[0] if isinstance(answer, dict) else answer[0]
            answers[name] = {"label": answer.get("label"), "score": answer.get("score")}
        log(f"  server answers for {os.path.basename(image)}: {answers}")

        rows = []
        peak_rss = {}
        for clients in (1, 8, 64):
            a = Contender("bestiary serve", "bestiary", lambda _r, c=clients: load(urls["bestiary-serve"], image, c, seconds))
            b = Contender(f"FastAPI + uvicorn ({workers} workers) + onnxruntime", "peer",
                          lambda _r, c=clients: load(urls["fastapi"], image, c, seconds))
            alternate([a, b], cfg.rounds, f"server {clients} clients")
            for server in (a_server, b_server):
                rss = server.rss_mb()
                if rss is not None:
                    peak_rss[server.name] = max(peak_rss.get(server.name, 0), rss)
            settings = {"model": "built-in animals (EfficientNet-Lite0, fp16-stored weights)", "batch_size": "server defaults (Bestiary: the engine's choice, 1 on onnxruntime; FastAPI: 1 per request)",
                        "image_size": 224, "threads": cfg.threads, "clients": clients, "seconds_per_run": seconds,
                        "photo": f"{os.path.basename(image)} ({len(body) // 1024} KiB JPEG)"}
            flops = ctx["flops"]("efficientnet-lite0", 224)
            rows.append(row("5 server", f"{clients} clients", settings, "throughput", "req/s", side(a, "rps"), side(b, "rps"),
                            gflop_per_image=flops["forward_gflop"]))
            rows.append(row("5 server", f"{clients} clients", settings, "p50 latency", "ms",
                            side(a, "p50_ms"), side(b, "p50_ms"), higher_is_better=False))
            rows.append(row("5 server", f"{clients} clients", settings, "p99 latency", "ms",
                            side(a, "p99_ms"), side(b, "p99_ms"), higher_is_better=False))
        ready_settings = {"model": "built-in animals", "threads": cfg.threads, "runs": 1,
                          "measured": "process start to the first 200 from /ping, polled every 10 ms"}
        rows.append(row("5 server", "start-up", ready_settings, "time to ready", "s",
                        {"name": "bestiary serve", "samples": [ready_s["bestiary-serve"]], "median": ready_s["bestiary-serve"]},
                        {"name": "FastAPI + uvicorn", "samples": [ready_s["fastapi"]], "median": ready_s["fastapi"]},
                        higher_is_better=False))
        rss_settings = {"model": "built-in animals", "threads": cfg.threads, "after": "the loads above"}
        rows.append(row("5 server", "resident memory after load", rss_settings, "RSS (process tree)", "MB",
                        {"name": "bestiary serve", "samples": [peak_rss.get("bestiary-serve")], "median": peak_rss.get("bestiary-serve")},
                        {"name": "FastAPI + uvicorn", "samples": [peak_rss.get("fastapi")], "median": peak_rss.get("fastapi")},
                        higher_is_better=False))
        for r in rows:
            r["answers"] = answers
        return rows
    finally:
        for server in started:
            server.stop()
