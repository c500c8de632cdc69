"""Peer of `bestiary serve` (figure 5): FastAPI + Pillow + onnxruntime, the usual Python way to
serve an image classifier. POST /v1/classify takes one image as the raw body and answers JSON
(label, score, top-k, model, timing). Run under uvicorn with one worker per core, each worker
with one onnxruntime thread so the workers do not fight over the cores:

  BENCH_MODEL_DIR=<model version folder> uvicorn fastapi_server:app --workers 2 --port 8000
"""

import os
import sys
import time

from fastapi import FastAPI, HTTPException, Request

sys.path.insert(0, os.path.dirname(__file__))
from preprocess import Model  # noqa: E402

model = Model(os.environ["BENCH_MODEL_DIR"], int(os.environ.get("BENCH_ORT_THREADS", "1")))
app = FastAPI()


@app.get("/ping")
def ping():
    return {"status": "ok"}


@app.post("/v1/classify")
async def classify(request: Request, top_k: int = 5):
    started = time.perf_counter()
    body = await request.body()
    try:
        tensor = model.preprocess(body)
    except Exception as error:  # noqa: BLE001 - any undecodable body is the client's fault
        raise HTTPException(422, f"cannot decode image: {error}") from error
    result = model.predict([tensor], top_k)[0]
    result.update(model=model.name, version=model.version,
                  timing_ms=(time.perf_counter() - started) * 1e3)
    return result
