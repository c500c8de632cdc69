"""Peer of `bestiary classify` (figure 6): a plain Python script that classifies every photo
under an S3 prefix, the way one would write it with boto3 + Pillow + onnxruntime: list the
prefix page by page, download and decode in a thread pool, run the model in batches, write the
results as JSON Lines parts back to S3. Prints one JSON summary line."""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(__file__))
from preprocess import Model  # noqa: E402

STARTED = time.perf_counter()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--out-prefix", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--download-workers", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--part-size", type=int, default=1000)
    a = p.parse_args()
    model = Model(a.model_dir, a.threads)
    s3 = boto3.client("s3", endpoint_url=a.endpoint,
                      config=Config(max_pool_connections=a.download_workers, s3={"addressing_style": "path"}))

    def keys():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=a.prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
                    yield obj["Key"], obj["ETag"].strip('"'), obj["Size"]

    def fetch(item):
        key, etag, size = item
        try:
            body = s3.get_object(Bucket=a.bucket, Key=key)["Body"].read()
            return item, model.preprocess(body), None
        except Exception as error:  # noqa: BLE001 - recorded per key
            return item, None, str(error)

    lines, parts, done, errors = [], 0, 0, 0

    def flush(final=False):
        nonlocal lines, parts
        if lines and (final or len(lines) >= a.part_size):
            s3.put_object(Bucket=a.bucket, Key=f"{a.out_prefix}/part-{parts:05d}.jsonl",
                          Body=("\n".join(lines) + "\n").encode())
            parts += 1
            lines = []

    batch = []

    def run_batch():
        nonlocal batch, done
        if batch:
            for (key, etag, size), result in zip([b[0] for b in batch], model.predict([b[1] for b in batch])):
                lines.append(json.dumps({"key": key, "etag": etag, "size": size, "label": result["label"],
                                         "score": result["score"], "top_k": result["top_k"],
                                         "model": model.name, "version": model.version}))
            done += len(batch)
            batch = []
            flush()

    def chunks(items, n):
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == n:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    # A few batches in flight at a time, so memory stays bounded however large the prefix.
    with ThreadPoolExecutor(a.download_workers) as pool:
        for chunk in chunks(keys(), a.batch_size * 4):
            for item, tensor, error in pool.map(fetch, chunk):
                if error is not None:
                    errors += 1
                    lines.append(json.dumps({"key": item[0], "error": error}))
                    continue
                batch.append((item, tensor))
                if len(batch) >= a.batch_size:
                    run_batch()
        run_batch()
    flush(final=True)
    seconds = time.perf_counter() - STARTED
    print(json.dumps({"images": done, "errors": errors, "parts": parts, "seconds": seconds,
                      "images_per_second": done / seconds}))


if __name__ == "__main__":
    main()
