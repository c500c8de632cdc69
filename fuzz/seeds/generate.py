"""Writes the fuzz targets' seed corpus (fuzz/seeds/<target>/): a few small, valid inputs of
each format, so libFuzzer starts from the shapes real requests have instead of from nothing.
Deterministic; rerun after changing a format:  .tools/venv/bin/python fuzz/seeds/generate.py"""

import base64
import io
import json
import os
import shutil
import struct

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
    # Found by fuzzing: a trailing slash made one folder display as two.
    write("store_url", "trailing-slash.txt", "photos\nphotos/")


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


def oip_requests():
    # Each seed: the Inference-Header-Content-Length value on the first line (empty: none), then
    # the body. Binary ones as tritonclient sends them: JSON without spaces, then the tensors.
    def binary(request, tensors):
        header = json.dumps(request, separators=(",", ":")).encode()
        return str(len(header)).encode() + b"\n" + header + b"".join(tensors)

    fp32 = struct.pack("<12f", *[(i - 6) / 4 for i in range(12)])
    write("oip_request", "binary-fp32.bin", binary(
        {"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(fp32)}}],
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                     {"name": "label", "parameters": {"binary_data": True}}]}, [fp32]))
    images = [photo("PNG", size=(2, 2)), b"aGk="]
    elements = b"".join(struct.pack("<I", len(e)) + e for e in images)
    write("oip_request", "binary-bytes.bin", binary(
        {"id": "7", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                "parameters": {"binary_data_size": len(elements)}}],
         "parameters": {"binary_data_output": True},
         "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]},
        [elements]))
    write("oip_request", "json-fp32.json", "\n" + json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 3, 1, 2], "datatype": "FP32",
                     "data": [[[[0.5, -1.25]], [[2, 0]], [[1e-3, 3.5]]]]}]}))
    write("oip_request", "json-bytes.json", "\n" + json.dumps(
        {"id": "r", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                "data": [base64.b64encode(images[0]).decode(), "aGk="]}],
         "outputs": [{"name": "label"}]}))


def json_lines():
    lines = [{"source-ref": "s3://b/photos/cat/1.jpg"}, {"uri": "photos/dog/2.jpg"},
             {"b64": base64.b64encode(photo("PNG", size=(2, 2))).decode()}]
    write("json_lines", "records.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    write("json_lines", "crlf.jsonl", "{\"b64\": \"aGk=\"}\r\n\r\n{\"source-ref\": \"a.jpg\"}\r\n")


def multipart():
    # The first line is the Content-Type; the fuzz target also parses the whole input with the
    # same boundary, the line then being the preamble.
    boundary = "bestiary-fuzz-boundary"
    body = f"multipart/form-data; boundary={boundary}\n".encode()
    parts = [(b'name="image"; filename="a.png"', "image/png", photo("PNG", size=(3, 2))),
             (b'name="b"', "image/jpeg", photo("JPEG", size=(2, 3), quality=50))]
    for disposition, content_type, data in parts:
        body += (b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; " + disposition
                 + b"\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + data + b"\r\n")
    body += b"--" + boundary.encode() + b"--\r\n"
    write("multipart", "two-photos.bin", body)


if __name__ == "__main__":
    for target in ("photo", "manifest", "store_url", "model_json", "oip_request", "json_lines",
                   "multipart"):
        shutil.rmtree(os.path.join(SEEDS, target), ignore_errors=True)
    photos()
    manifests()
    store_urls()
    model_json()
    oip_requests()
    json_lines()
    multipart()
