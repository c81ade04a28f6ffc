"""summary(): what a model is and costs, read from its traced graph and its executor's plan."""
import textwrap

from . import functional as F
from . import runtime
from .optim import make_optimizer

__all__ = ["summary", "format_summary"]

_PLAN_ROWS = ("params", "grads", "grad_slots", "optimizer_state", "buffers", "input", "activations", "workspace",
              "total")


def summary(model, input_shape=None, batch_size=64, optimizer=None, print_fn=print):
    """Per node of the forward graph: the module (or function) it comes from, its output shape,
    parameters, FLOPs and activation bytes at this batch size; then the memory plan the runtime
    allocates to train at this batch size with this optimizer (an Optimizer, a name, or None:
    what train() uses by default). Returned as a dict, and printed with print_fn."""
    shape = input_shape or getattr(model, "input_shape", None) or model.__dict__.get("_last_input_shape")
    if shape is None:
        raise ValueError(f"summary: {type(model).__name__} has no input_shape; pass input_shape=(C, H, W)")
    shape = tuple(int(d) for d in shape)
    runtime._positive_int(batch_size, "batch_size", "summary")
    if optimizer is None or isinstance(optimizer, str):
        opt = make_optimizer(optimizer)
    else:  # a copy: planning must not touch the caller's optimizer state
        opt = make_optimizer(make_optimizer(optimizer).config())
    with runtime._EvalMode(model, training=True):
        t = runtime.traced(model, shape, batch_size, F.cross_entropy)
        ex = runtime.build_executor(model, t, capacity=batch_size, optimizer=opt)
    modules = dict(model.named_modules())
    rows, seen, forward_flops = [], set(), 0.0
    for i, n in enumerate(t.graph.nodes()):
        if n["backward"] or n["op"] in ("input", "labels", "param", "buffer", "cross_entropy", "nll_loss"):
            continue
        path = t.node_modules.get(i, (None, ""))[0]
        params = 0
        for v in n["inputs"]:
            info = t.graph.value(v) if v >= 0 else None
            if info and info["kind"] == "fixed" and info["name"] and v not in seen and info["name"] in \
                    dict(model.named_parameters()):
                seen.add(v)
                params += int(_numel(info["shape"]))
        out = n["outputs"][0]
        per = _numel(t.graph.shape(out))
        layer = f"{path}: {modules[path]!r}" if path is not None and path in modules else \
            f"{n['op']} ({n['scope']}{', ' + n['where'] if n['where'] else ''})"
        forward_flops += n["flops"]
        rows.append({"index": len(rows), "layer": layer, "op": n["op"], "out_shape": (batch_size, *t.graph.shape(out)),
                     "params": params, "flops": n["flops"] * batch_size, "activation_bytes": 4 * per * batch_size})
    result = {"model": str(getattr(model, "name", None) or type(model).__name__),
              "input_shape": (batch_size, *shape), "layers": rows, "total_params": model.num_parameters(),
              "forward_flops_per_sample": forward_flops, "training_flops_per_sample": 3 * forward_flops,
              "memory_plan": ex.memory_plan(), "optimizer": repr(opt), "conv_algorithms": ex.conv_algorithms,
              "instructions": len(ex.instructions())}
    if print_fn:
        print_fn(format_summary(result))
    return result


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


_LAYER_WIDTH = 56  # a longer layer description wraps onto more lines, at its commas and spaces


def format_summary(s):
    width = max([24] + [min(len(r["layer"]), _LAYER_WIDTH) for r in s["layers"]])
    lines = [f"{s['model']}: input {s['input_shape']}, optimizer {s['optimizer']}",
             f"{'#':>2}  {'layer':<{width}} {'output':<18} {'params':>9} {'MFLOPs':>9} {'activations':>12}"]
    for r in s["layers"]:
        layer = textwrap.wrap(r["layer"], width, subsequent_indent="  ", break_on_hyphens=False) or [""]
        lines.append(f"{r['index']:>2}  {layer[0]:<{width}} {str(r['out_shape']):<18} {r['params']:>9,} "
                     f"{r['flops'] / 1e6:>9.2f} {_human(r['activation_bytes']):>12}")
        lines.extend(f"    {part}" for part in layer[1:])
    p = s["memory_plan"]
    lines.append(f"total parameters {s['total_params']:,}; forward {s['forward_flops_per_sample'] / 1e6:.2f} "
                 f"MFLOP/sample, training ~{s['training_flops_per_sample'] / 1e6:.2f} MFLOP/sample")
    lines.append(f"memory plan (bytes the runtime allocates for training at this batch size; activations "
                 f"without reuse would take {_human(p['activations_unshared'])}):")
    for k in _PLAN_ROWS:
        lines.append(f"  {k:<17} {_human(p[k]):>10}  ({p[k]:,} B)")
    if s.get("conv_algorithms"):
        lines.append(f"conv algorithms: {', '.join(s['conv_algorithms'])}")
    return "\n".join(lines)
