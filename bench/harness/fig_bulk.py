"""Figure 6: bulk classification of an S3 prefix in SeaweedFS (the project's test server): the
animals10 photos uploaded many times under distinct keys, classified by `bestiary classify` and by
a boto3 + Pillow + onnxruntime script with the same model, writing JSON Lines results back to
the bucket. Images per second over the whole process (listing, downloads, decoding, inference,
writing results) and the process's peak resident memory; then one run of each on prefixes of
1,000 and 10,000 photos, to show whether memory grows with the prefix."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

from . import servers
from .common import BESTIARY, ROOT, SHARED, Contender, alternate, log, peer, row, run, side
from .fig_engine import version_dir


def upload(env, prefix, count):
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=env["BESTIARY_TEST_S3_ENDPOINT"],
                      aws_access_key_id=env["BESTIARY_TEST_S3_ACCESS_KEY"],
                      aws_secret_access_key=env["BESTIARY_TEST_S3_SECRET_KEY"], region_name="us-east-1",
                      config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))
    source = os.path.join(SHARED, "data", "animals10", "images")
    photos = sorted(os.path.join(c, f) for c in sorted(os.listdir(source)) if os.path.isdir(os.path.join(source, c))
                    for f in sorted(os.listdir(os.path.join(source, c))))
    blobs = {p: open(os.path.join(source, p), "rb").read() for p in photos}
    keys = [(f"{prefix}/copy-{i // len(photos):04d}/{photos[i % len(photos)]}", photos[i % len(photos)]) for i in range(count)]
    bucket = env["BESTIARY_TEST_S3_BUCKET"]
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda kp: s3.put_object(Bucket=bucket, Key=kp[0], Body=blobs[kp[1]]), keys))
    log(f"  bulk: uploaded {count} photos to s3://{bucket}/{prefix} in {time.monotonic() - started:.0f} s")


def figure(cfg, ctx):
    count = 200 if cfg.quick else cfg.bulk_photos
    model_dir = version_dir(os.path.join(ROOT, "models", "animals"))
    server, env = servers.seaweedfs()
    try:
        bucket, endpoint = env["BESTIARY_TEST_S3_BUCKET"], env["BESTIARY_TEST_S3_ENDPOINT"]
        prefix = f"bench-bulk-{count}/photos"
        upload(env, prefix, count)
        s3_env = {"AWS_ACCESS_KEY_ID": env["BESTIARY_TEST_S3_ACCESS_KEY"],
                  "AWS_SECRET_ACCESS_KEY": env["BESTIARY_TEST_S3_SECRET_KEY"], "AWS_REGION": "us-east-1",
                  "AWS_DEFAULT_REGION": "us-east-1"}

        def bestiary(r, prefix=prefix, count=count):
            result = run([BESTIARY, "--s3-endpoint", endpoint, "classify", f"s3://{bucket}/{prefix}",
                          "--model", model_dir, "--out", f"s3://{bucket}/{prefix}-out/bestiary-{r}", "--quiet"],
                         env={**cfg.bestiary_env, **s3_env})
            if result.returncode == 3:
                raise RuntimeError("`bestiary classify` is not built yet (exit status 3)")
            if not result.ok:
                raise RuntimeError(result.fail_reason())
            return {"images_per_second": count / result.wall, "rss_mb": result.max_rss_mb, "seconds": result.wall}

        def python(r, prefix=prefix, count=count):
            result = peer("bulk_classify.py", "--endpoint", endpoint, "--bucket", bucket, "--prefix", prefix,
                          "--out-prefix", f"{prefix}-out/python-{r}", "--model-dir", model_dir,
                          "--threads", cfg.threads, env=s3_env)
            if not result.ok:
                raise RuntimeError(result.fail_reason())
            import json

            summary = json.loads(result.lines[-1][1])
            if summary["images"] != count:
                raise RuntimeError(f"classified {summary['images']} of {count} photos ({summary['errors']} errors)")
            return {"images_per_second": count / result.wall, "rss_mb": result.max_rss_mb, "seconds": result.wall}

        a = Contender("bestiary classify", "bestiary", bestiary)
        b = Contender("boto3 + Pillow + onnxruntime script", "peer", python)
        alternate([a, b], cfg.rounds, f"bulk {count} photos")
        settings = {"model": "built-in animals (EfficientNet-Lite0)", "batch_size": "peer 32 on one session of every core; Bestiary its defaults: 1, on one 1-thread session per core",
                    "image_size": 224, "threads": cfg.threads, "photos": count,
                    "store": "SeaweedFS on 127.0.0.1 (crates/testkit launcher)"}
        flops = ctx["flops"]("efficientnet-lite0", 224)
        rows = [
            row("6 bulk", f"{count} photos from S3", settings, "throughput (whole process)", "img/s",
                side(a, "images_per_second"), side(b, "images_per_second"), gflop_per_image=flops["forward_gflop"]),
            row("6 bulk", f"{count} photos from S3", settings, "peak RSS", "MB",
                side(a, "rss_mb"), side(b, "rss_mb"), higher_is_better=False),
        ]
        for scale in ((100, 400) if cfg.quick else (1000, 10000)):
            scale_prefix = f"bench-bulk-scale-{scale}/photos"
            upload(env, scale_prefix, scale)
            a = Contender("bestiary classify", "bestiary", lambda r, p=scale_prefix, n=scale: bestiary(r, p, n))
            b = Contender("boto3 + Pillow + onnxruntime script", "peer", lambda r, p=scale_prefix, n=scale: python(r, p, n))
            alternate([a, b], 1, f"bulk memory at {scale} photos")
            rows.append(row("6 bulk", f"memory at {scale} photos", {**settings, "photos": scale, "runs": 1}, "peak RSS", "MB",
                            side(a, "rss_mb"), side(b, "rss_mb"), higher_is_better=False))
        return rows
    finally:
        server.stop()
