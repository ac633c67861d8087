"""Anchor (a): FastAPI + uvicorn + Python onnxruntime serving the OIP v2 infer route.

What a team would write by hand to put an ONNX model behind HTTP, written reasonably: one uvicorn
worker (uvloop + httptools when installed), the session created once at start-up with one
intra-op thread (as kinfer-runtime runs), pydantic request models, numpy conversion, no access log.
The handler is `async def` and runs the session inline: for sub-millisecond models that is faster
than FastAPI's thread pool (a `def` handler), so this is the anchor's better configuration.

    python bench/anchors/fastapi_server.py --model m.onnx --name mlp --port 18780
"""
import argparse
from typing import Any, List, Optional

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
OIP = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}


class Tensor(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    data: List[Any]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[Tensor]


def app_for(model_path: str, name: str) -> FastAPI:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    outputs = [(o.name, OIP.get(o.type, "FP32")) for o in session.get_outputs()]
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, req: InferRequest):
        if model != name:
            raise HTTPException(404, f"unknown model {model}")
        try:
            feed = {t.name: np.asarray(t.data, dtype=DTYPES[t.datatype]).reshape(t.shape) for t in req.inputs}
        except (KeyError, ValueError) as e:
            raise HTTPException(400, f"bad input: {e}")
        results = session.run(None, feed)
        return {
            "model_name": name,
            "id": req.id,
            "outputs": [
                {"name": n, "datatype": dt, "shape": list(r.shape), "data": r.ravel().tolist()}
                for (n, dt), r in zip(outputs, results)
            ],
        }

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18780)
    a = p.parse_args()
    uvicorn.run(app_for(a.model, a.name), host=a.host, port=a.port, workers=1, access_log=False,
                log_level="warning")
