"""The evaluation transform of a Bestiary model (model.json `input`) in Pillow + numpy, as a
Python service would write it: decode, RGB, resize the shorter side to size/crop_fraction
(bilinear), centre crop, (pixel - mean) / std, CHW float32. Shared by the FastAPI server and
the bulk script; one ONNX session per process."""

import io
import json
import os

import numpy as np
from PIL import Image


class Model:
    def __init__(self, model_dir, threads):
        import onnxruntime as ort

        meta = json.load(open(os.path.join(model_dir, "model.json")))
        spec = meta["input"]
        self.name, self.version = meta["name"], meta["version"]
        self.classes = meta["classes"]
        self.size = spec["image_size"]
        self.resize = round(self.size / spec.get("crop_fraction", 0.875))
        norm = spec["normalization"]
        self.mean = np.array(norm["mean"], dtype=np.float32)
        self.scale = 1.0 / np.array(norm["std"], dtype=np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = [self.session.get_outputs()[0].name]

    def preprocess(self, data):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        pixels = np.asarray(image.crop((left, top, left + self.size, top + self.size)), dtype=np.float32)
        return ((pixels - self.mean) * self.scale).transpose(2, 0, 1)

    def predict(self, tensors, top_k=5):
        logits = self.session.run(self.output, {self.input: np.stack(tensors)})[0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        results = []
        for row in probs:
            order = np.argsort(-row)[:top_k]
            top = [{"label": self.classes[i], "score": float(row[i])} for i in order]
            results.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
        return results
