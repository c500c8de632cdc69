"""Writes the fuzz targets' seed corpus (fuzz/seeds/<target>/): a few small, valid inputs of
each format, so libFuzzer starts from the shapes real requests have instead of from nothing.
Deterministic; rerun after changing a format:  .tools/venv/bin/python fuzz/seeds/generate.py"""

import io
import json
import os
import shutil

from PIL import Image

SEEDS = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(SEEDS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def photo(fmt, size=(12, 9), mode="RGB", **options):
    image = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            value = (x * 21 % 256, y * 28 % 256, (x + y) * 11 % 256)
            image.putpixel((x, y), value if mode == "RGB" else value[0])
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photos():
    write("photo", "rgb.jpg", photo("JPEG", quality=80))
    write("photo", "progressive.jpg", photo("JPEG", progressive=True))
    write("photo", "grey.jpg", photo("JPEG", mode="L"))
    write("photo", "rgb.png", photo("PNG"))
    write("photo", "grey.png", photo("PNG", mode="L"))
    write("photo", "tall.gif", photo("GIF", size=(3, 17)))
    write("photo", "rgb.bmp", photo("BMP"))
    write("photo", "rgb.webp", photo("WEBP", lossless=True))
    write("photo", "rgb.tiff", photo("TIFF"))


def manifests():
    lines = [{"source-ref": "s3://b/photos/cat/1.jpg", "class": "cat"},
             {"source-ref": "photos/dog/2.jpg", "class": 1, "class-metadata": {"class-name": "dog"}},
             {"source-ref": "s3://b/photos/3.jpg", "label": "horse"}]
    write("manifest", "ground-truth.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    write("manifest", "labels.csv", "key,label\nphotos/cat/1.jpg,cat\n\"photos/a,b.jpg\",dog\n")
    write("manifest", "no-header.csv", "cat/1.jpg,cat\r\ndog/2.jpg,dog\r\n")


def store_urls():
    write("store_url", "s3.txt", "s3://photos/incoming/\ns3://photos/incoming/cat/1.jpg")
    write("store_url", "gs.txt", "gs://bucket/a/b\nphotos/../secret")
    write("store_url", "az.txt", "az://container/prefix\n/abs/key")
    write("store_url", "local.txt", "file:///srv/photos\n./cat/1.jpg")
    write("store_url", "relative.txt", "photos/bucket\ncat//2.jpg")


def model_json():
    # The built-in model's own metadata, and a minimal one derived from it.
    root = os.path.join(SEEDS, "..", "..", "models")
    for dirpath, _, files in os.walk(root):
        if "model.json" in files:
            with open(os.path.join(dirpath, "model.json")) as f:
                metadata = json.load(f)
            write("model_json", "built-in.json", json.dumps(metadata))
            minimal = {key: metadata[key] for key in ("format", "name", "version", "architecture",
                                                      "classes", "input", "software", "created")}
            minimal["classes"] = minimal["classes"][:2]
            write("model_json", "minimal.json", json.dumps(minimal))
            break


if __name__ == "__main__":
    for target in ("photo", "manifest", "store_url", "model_json"):
        shutil.rmtree(os.path.join(SEEDS, target), ignore_errors=True)
    photos()
    manifests()
    store_urls()
    model_json()
