"""ONNX export: a traced pylenet model as an ONNX model that onnxruntime (or any ONNX runtime) runs.

The exporter reads the same graph that training, ``summary()`` and checkpoints read: the
model is traced in evaluation mode (dropout is gone, batch norm uses its running statistics),
and each node becomes one ONNX operator. Parameters and buffers become initializers under
their ``state_dict`` names (``conv1.weight``, ``bn1.running_mean``), so the file is easy to
inspect. The input is called ``input`` and the output ``output``; the batch axis is dynamic.
The exported model computes what ``model(x)`` computes: it takes the same (already
normalised) input; the model's ``normalization``, if any, is recorded in the metadata.

Needs the ``onnx`` package (``pip install "pylenet[onnx]"``); pylenet itself does not.
"""
import json

import numpy as np

__all__ = ["export", "DEFAULT_OPSET"]

# Opset 18 (ONNX 1.13, onnxruntime >= 1.14): recent, and every operator used here has had its
# present form since opset 13 or earlier, so older runtimes can take ``opset=13``.
DEFAULT_OPSET = 18
_MIN_OPSET = 13


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('pylenet.onnx.export needs the onnx package: pip install "pylenet[onnx]" '
                          '(or pip install onnx)') from None
    return onnx


def export(model, path, input_shape=None, opset=DEFAULT_OPSET, check=True):
    """Writes ``model`` as an ONNX file at ``path`` (atomically) and returns the ModelProto.

    input_shape: the per-sample shape (C, H, W); by default the model's own ``input_shape``
    (the built-in models and loaded checkpoints have one) or the shape it was last called on.
    opset: the ONNX opset (13 or later). check: run ``onnx.checker`` with shape inference.
    """
    onnx = _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    from . import runtime
    from .atomic import write_atomic
    from .nn.layers import input_shape_of
    from .nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"onnx.export: expected a pylenet Module, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < _MIN_OPSET:
        raise ValueError(f"onnx.export: opset must be an integer >= {_MIN_OPSET}, got {opset!r}")
    shape = input_shape or getattr(model, "input_shape", None) or model.__dict__.get("_last_input_shape")
    if shape is None:
        raise ValueError(f"onnx.export: {type(model).__name__} has no input_shape; pass input_shape=(C, H, W)")
    shape = input_shape_of(shape, "onnx.export")
    with runtime._EvalMode(model):
        t = runtime.traced(model, shape, 1)

    g = t.graph
    names = {vid: name for name, vid in {**t.params, **t.buffers}.items()}
    arrays = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    initializers, nodes, consts = [], [], {}

    def value(vid):
        """The ONNX name of graph value `vid` ("" for an absent optional input)."""
        if vid < 0:
            return ""
        if vid == g.input:
            return "input"
        if vid == t.output:
            return "output"
        if vid in names:
            return names[vid]
        return f"v{vid}"

    def const(name, array):
        if name not in consts:
            consts[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
            initializers.append(consts[name])
        return name

    used = set()
    for i, n in enumerate(g.nodes()):
        op, a = n["op"], n["attrs"]
        if op in ("input", "param", "buffer", "labels") or n["backward"]:
            continue
        ins, out = n["inputs"], value(n["outputs"][0])
        where = f"{n['scope']}{' (' + n['where'] + ')' if n['where'] else ''}"
        x = value(ins[0])
        used.update(v for v in ins if v >= 0)
        if op == "conv2d":
            kh, kw = g.shape(ins[1])[2:]
            sh, sw = a["stride"]
            ph, pw = a["padding"]
            inputs = [x, value(ins[1])] + ([value(ins[2])] if ins[2] >= 0 else [])
            nodes.append(helper.make_node("Conv", inputs, [out], name=f"n{i}", kernel_shape=[kh, kw],
                                          strides=[sh, sw], pads=[ph, pw, ph, pw]))
        elif op == "linear":
            inputs = [x, value(ins[1])] + ([value(ins[2])] if ins[2] >= 0 else [])
            nodes.append(helper.make_node("Gemm", inputs, [out], name=f"n{i}", transB=1))
        elif op in ("max_pool2d", "avg_pool2d"):
            kh, kw = a["kernel_size"]
            sh, sw = a["stride"]
            ph, pw = a["padding"]
            kwargs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw]}
            if op == "avg_pool2d":  # the padded zeros count, as in PyTorch's default and our kernels
                kwargs["count_include_pad"] = 1
            nodes.append(helper.make_node("MaxPool" if op == "max_pool2d" else "AveragePool", [x], [out],
                                          name=f"n{i}", **kwargs))
        elif op in ("relu", "tanh", "sigmoid"):
            nodes.append(helper.make_node({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[op], [x], [out],
                                          name=f"n{i}"))
        elif op == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [x], [out], name=f"n{i}",
                                          alpha=float(a.get("negative_slope", 0.01))))
        elif op == "add":
            nodes.append(helper.make_node("Add", [x, value(ins[1])], [out], name=f"n{i}"))
        elif op == "cat":
            nodes.append(helper.make_node("Concat", [value(v) for v in ins], [out], name=f"n{i}", axis=1))
        elif op == "reshape":
            # The batch axis stays free: (-1, *per-sample shape).
            target = const(f"shape{i}", np.array([-1, *a["shape"]], np.int64))
            nodes.append(helper.make_node("Reshape", [x, target], [out], name=f"n{i}"))
        elif op == "dropout":  # an eval-mode trace has none; an identity if one is there
            nodes.append(helper.make_node("Identity", [x], [out], name=f"n{i}"))
        elif op == "batch_norm":
            if ins[3] < 0:
                raise ValueError(f"onnx.export: {where}: batch norm without running statistics "
                                 "(track_running_stats=False) normalises by each batch's own statistics in "
                                 "evaluation too, which ONNX's BatchNormalization cannot express")
            channels = g.shape(ins[0])[0]
            scale = value(ins[1]) if ins[1] >= 0 else const(f"ones{channels}", np.ones(channels, np.float32))
            bias = value(ins[2]) if ins[2] >= 0 else const(f"zeros{channels}", np.zeros(channels, np.float32))
            nodes.append(helper.make_node("BatchNormalization", [x, scale, bias, value(ins[3]), value(ins[4])],
                                          [out], name=f"n{i}", epsilon=float(a["eps"]),
                                          momentum=1.0 - float(a["momentum"])))
            used.discard(ins[5])  # num_batches_tracked: training bookkeeping only
        elif op in ("softmax", "log_softmax"):
            nodes.append(helper.make_node("Softmax" if op == "softmax" else "LogSoftmax", [x], [out],
                                          name=f"n{i}", axis=1))
        else:
            raise ValueError(f"onnx.export: {where}: the op {op!r} has no ONNX form in this exporter")

    for vid in sorted(used):
        if vid in names:
            arr = np.asarray(arrays[names[vid]])
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), names[vid]))

    out_shape = list(g.shape(t.output))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *out_shape])]
    if t.output == g.input:  # forward() returned its input: ONNX needs a node between them
        nodes.append(helper.make_node("Identity", ["input"], ["output"], name="identity"))
    graph = helper.make_graph(nodes, str(getattr(model, "name", None) or type(model).__name__), inputs, outputs,
                              initializers)
    proto = helper.make_model(graph, producer_name="pylenet", producer_version=_version(),
                              opset_imports=[helper.make_opsetid("", int(opset))])
    # The oldest IR version that carries this opset (8 for 18), not the newest onnx knows: so
    # runtimes older than the onnx package that wrote the file still read it.
    proto.ir_version = helper.find_min_ir_version_for(proto.opset_import)
    meta = {"input_shape": json.dumps(list(shape))}
    if getattr(model, "normalization", None):
        meta["normalization"] = json.dumps(list(model.normalization))
    helper.set_model_props(proto, meta)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        data = proto.SerializeToString()
        write_atomic(path, lambda f: f.write(data))
    return proto


def _version():
    from . import __version__
    return __version__
