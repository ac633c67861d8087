"""Anchor (b): KServe's Python ModelServer (PyPI `kserve`) serving the ONNX model through
onnxruntime on its REST v2 endpoint (POST /v2/models/{name}/infer, Open Inference Protocol).

A `kserve.Model` subclass, the way KServe's docs write a custom predictor: `load()` creates the
session once (one intra-op thread, as kinfer-runtime runs), `predict()` takes the `InferRequest`,
converts with `as_numpy()` and answers an `InferResponse`. One uvicorn worker (KServe's default),
its gRPC server off, per-request latency logging off (generous to the anchor: both are on by
default).

    python bench/anchors/kserve_server.py --model_path m.onnx --model_name mlp --http_port 18880
"""
import argparse
import logging

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

OIP = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}


class OnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.session = None
        self.load()

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.outputs = [(o.name, OIP.get(o.type, "FP32")) for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feed = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(None, feed)
        outs = [InferOutput(name=n, shape=list(r.shape), datatype=dt, data=r.ravel().tolist())
                for (n, dt), r in zip(self.outputs, results)]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name or "mlp", args.model_path)  # --model_name is KServe's own flag
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                         enable_grpc=False, enable_latency_logging=False)
    # KServe logs every request through uvicorn's access logger; the benchmark keeps it quiet.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
