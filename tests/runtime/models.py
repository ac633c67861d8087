"""ONNX models for the runtime tests, generated with the `onnx` package (no downloads)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="kinfer-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp(path, seed=0, features=4, classes=3, hidden=16, extra_layers=0):
    """x[-1,features] FP32 -> probs[-1,classes] (softmax) and score[-1,1] (sigmoid).
    `extra_layers` adds hidden->hidden layers whose output is multiplied by 0 and added back:
    the same outputs for more compute (a slower version)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(features, hidden)).astype(np.float32)
    b1 = rng.normal(size=(hidden,)).astype(np.float32)
    w2 = rng.normal(size=(hidden, classes)).astype(np.float32)
    ws = rng.normal(size=(hidden, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (ws, "ws")]]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
    ]
    last = "h"
    if extra_layers:
        wx = rng.normal(size=(hidden, hidden)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(wx, "wx"), numpy_helper.from_array(np.zeros((1,), np.float32), "zero")]
        cur = "h"
        for i in range(extra_layers):
            nodes += [helper.make_node("MatMul", [cur, "wx"], [f"e{i}"]), helper.make_node("Tanh", [f"e{i}"], [f"t{i}"])]
            cur = f"t{i}"
        nodes += [helper.make_node("Mul", [cur, "zero"], ["ez"]), helper.make_node("Add", ["h", "ez"], ["hx"])]
        last = "hx"
    nodes += [
        helper.make_node("MatMul", [last, "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", [last, "ws"], ["s0"]),
        helper.make_node("Sigmoid", ["s0"], ["score"]),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
        ],
        inits,
    )
    return _save(g, path)


def two_inputs(path):
    """a, b [-1,2] FP32 -> sum = a + b, prod = a * b."""
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("sum", "prod")],
    )
    return _save(g, path)


DTYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
}


def identity(path, oip_dtype):
    """x[-1,3] of the datatype -> y = Identity(x); a fixed-shape input too: k[2] -> kk."""
    t, _ = DTYPES[oip_dtype]
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["k"], ["kk"])],
        "identity",
        [helper.make_tensor_value_info("x", t, ["batch", 3]), helper.make_tensor_value_info("k", t, [2])],
        [helper.make_tensor_value_info("y", t, ["batch", 3]), helper.make_tensor_value_info("kk", t, [2])],
    )
    return _save(g, path)


def golden(path, model_path, n=32, seed=1, perturb=0.0):
    """Writes a golden set for a single-input model: input.<name> and output.<name> arrays."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(seed).normal(size=(n, inp.shape[1])).astype(np.float32)
    outs = sess.run(None, {inp.name: x})
    arrays = {f"input.{inp.name}": x}
    for o, v in zip(sess.get_outputs(), outs):
        arrays[f"output.{o.name}"] = v + perturb
    np.savez(str(path), **arrays)
    return path


def bench_mlp(path, features=64, hidden=256, classes=2, seed=0):
    """The benchmarks' reference model: features -> hidden -> hidden -> classes (softmax)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w3 = (rng.normal(size=(hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (w2, "w2"), (w3, "w3")]]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("MatMul", ["ar", "w2"], ["b"]), helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("MatMul", ["br", "w3"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    g = helper.make_graph(nodes, "bench_mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])], inits)
    return _save(g, path)


def scorer(path, seed=0, features=8, classes=4, hidden=32, weight_noise=0.0, logit_shift=0.0,
           slow_layers=0, slow_width=768):
    """x[-1,features] -> probs[-1,classes] (softmax), a fraud-scorer-like model for the watcher
    tests. `weight_noise` perturbs the weights (a retrained, equivalent version); `logit_shift`
    adds to class 0's logit (a version whose decisions drift); `slow_layers` adds a side chain of
    slow_width x slow_width MatMul+Tanh layers whose result is multiplied by 0 and added: the same
    outputs for much more compute (a slower version)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    if weight_noise:
        noise = np.random.default_rng(seed + 1000)
        w1 = w1 + (noise.normal(size=w1.shape) * weight_noise).astype(np.float32)
        w2 = w2 + (noise.normal(size=w2.shape) * weight_noise).astype(np.float32)
    shift = np.zeros((classes,), np.float32)
    shift[0] = logit_shift
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (w2, "w2"), (shift, "shift")]]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"])]
    last = "h"
    if slow_layers:
        sa = (rng.normal(size=(features, slow_width)) / np.sqrt(features)).astype(np.float32)
        sb = (rng.normal(size=(slow_width, slow_width)) / np.sqrt(slow_width)).astype(np.float32)
        inits += [numpy_helper.from_array(sa, "sa"), numpy_helper.from_array(sb, "sb"),
                  numpy_helper.from_array(np.zeros((1,), np.float32), "zero")]
        nodes.append(helper.make_node("MatMul", ["x", "sa"], ["s0"]))
        cur = "s0"
        for i in range(slow_layers):
            nodes += [helper.make_node("MatMul", [cur, "sb"], [f"sm{i}"]), helper.make_node("Tanh", [f"sm{i}"], [f"st{i}"])]
            cur = f"st{i}"
        nodes += [helper.make_node("ReduceMean", [cur], ["ssum"], axes=[1], keepdims=1),
                  helper.make_node("Mul", ["ssum", "zero"], ["sz"]), helper.make_node("Add", ["h", "sz"], ["hs"])]
        last = "hs"
    nodes += [helper.make_node("MatMul", [last, "w2"], ["l0"]), helper.make_node("Add", ["l0", "shift"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    g = helper.make_graph(nodes, "scorer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])], inits)
    return _save(g, path)


def seq_model(path, fused=False):
    """x[batch, seq] FP32 (seq dynamic) -> y = 2x + 1 [batch, seq] and s = sum(x*x) [batch, 1]:
    outputs whose shape follows the request's, so mixing lengths in one batch would show.
    With `fused`, s is Mul then ReduceSum, which ONNX Runtime fuses into a kernel whose result
    for a row depends on the batch it runs in (for lengths that are not a multiple of 4); the
    plain model uses ReduceSumSquare, whose rows are computed alike at any batch size."""
    square = ([helper.make_node("Mul", ["x", "x"], ["xx"]),
               helper.make_node("ReduceSum", ["xx", "axes"], ["s"], keepdims=1)] if fused else
              [helper.make_node("ReduceSumSquare", ["x"], ["s"], axes=[1], keepdims=1)])
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
            *square,
        ],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 1]),
        ],
        [
            numpy_helper.from_array(np.array([2.0], np.float32), "two"),
            numpy_helper.from_array(np.array([1.0], np.float32), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    return _save(g, path)


def gather_model(path, vocab=16, dim=4, seed=3):
    """ids[batch, seq] INT64 -> emb[batch, seq, dim], rows of an embedding table: an id outside
    [-vocab, vocab) makes ONNX Runtime fail the run (a request that fails on its data)."""
    table = np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "seq", dim])],
        [numpy_helper.from_array(table, "table")],
    )
    return _save(g, path)


def sqrt_scorer(path):
    """x[batch, 1] FP32 -> score = sqrt(x): NaN for a negative input, infinity for an infinite one
    (scores a decision policy must not map to its default label)."""
    g = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["score"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
    )
    return _save(g, path)


def batch_mixer(path):
    """x[batch, 2] FP32 -> y = x - mean(x over the batch): every row depends on the others, so
    stacking requests would change their answers (the runtime must not batch it)."""
    g = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "m"], ["y"]),
        ],
        "mixer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    return _save(g, path)
