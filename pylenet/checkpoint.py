"""Checkpoints: one .npz file (no pickle), written atomically.

A checkpoint holds the parameters and buffers under their state_dict names, the optimizer's
configuration and state (to resume), and a description of the model read from the model
itself: the module tree (every module's path and class; the built-in layers' constructor
arguments) and the traced graph (training mode, so dropout and batch norm are in it). Loading
rebuilds models made only of built-in modules (``models.lenet5()``, any ``Sequential``)
exactly; a model of the user's own classes, whose code the file cannot hold, comes back as a
``GraphModule``: the same submodules, parameter names and computation, its forward()
replaying the graph. ``load(path, model=MyNet())`` loads into an instance of the user's class
instead. Checkpoints of format 1 (written before models were Python code) still load.
"""
import json
import os
import zipfile

import numpy as np

from . import _C
from . import functional as F
from .atomic import write_atomic
from .nn.init import seeded
from .nn.layers import LAYERS
from .nn.module import Module, Parameter

__all__ = ["save", "load", "CHECKPOINT_FORMAT", "GraphModule"]

CHECKPOINT_FORMAT = 2
_MAX_PARAMS = 1 << 28  # 1 GiB of float32: beyond any small CNN, so a corrupt file, refused early
# Parameters, two optimizer buffers as large and the metadata: the most a file may inflate to.
_MAX_FILE_BYTES = 3 * 4 * _MAX_PARAMS + (64 << 20)
_MAX_STEPS = 1 << 53  # optimizer steps: exact in a double, and beyond any real run


def _containers():
    from .nn.layers import LAYERS, ModuleList, Sequential
    return {**LAYERS, "Sequential": Sequential, "ModuleList": ModuleList}


def _module_tree(model):
    """[{"path", "type", "config"}] for every module, in named_modules() order; config is the
    constructor's arguments for built-in classes, None for the user's own."""
    from .nn.layers import Sequential
    known = _containers()
    tree = []
    for path, m in model.named_modules():
        name = type(m).__name__
        config = None
        if known.get(name) is type(m):
            if isinstance(m, Sequential):
                config = {"input_shape": list(m.input_shape) if m.input_shape else None, "name": m.name,
                          "normalization": list(m.normalization) if m.normalization else None}
            elif name == "ModuleList":
                config = {}
            else:
                config = m._config()
        tree.append({"path": path, "type": name, "config": config})
    return tree


def _graph_description(model, input_shape):
    """The forward graph in training mode, as JSON-able nodes and source values."""
    from . import runtime
    if input_shape is None:
        return None
    with runtime._EvalMode(model, training=True):
        t = runtime.traced(model, input_shape, 2)
    nodes = []
    root = type(model).__name__
    for i, n in enumerate(t.graph.nodes()):
        path, module = t.node_modules.get(i, (None, ""))
        nodes.append({"op": n["op"], "inputs": n["inputs"], "outputs": n["outputs"], "attrs": n["attrs"],
                      "path": path, "module": module,
                      "scope": n["scope"][len(root) + 1:] if n["scope"].startswith(root + ".") else ""})
    values = {str(vid): name for name, vid in {**t.params, **t.buffers}.items()}
    return {"nodes": nodes, "values": values, "input": t.graph.input, "output": t.output,
            "input_shape": list(input_shape)}


def save(model, path, optimizer=None, extra=None):
    """Writes model (and, if given, the optimizer's config and state for resuming) to path."""
    if not isinstance(model, Module):
        raise TypeError(f"save: expected a pylenet Module, got {type(model).__name__}")
    input_shape = getattr(model, "input_shape", None) or model.__dict__.get("_last_input_shape")
    norm = getattr(model, "normalization", None)
    meta = {"format": CHECKPOINT_FORMAT, "pylenet_version": _C.build_info()["version"],
            "name": str(getattr(model, "name", None) or type(model).__name__), "class": type(model).__name__,
            "input_shape": list(input_shape) if input_shape else None,
            "normalization": list(norm) if norm else None,
            "modules": _module_tree(model), "graph": _graph_description(model, input_shape),
            "optimizer": None, "extra": extra or {}}
    arrays = {}
    params = dict(model.named_parameters())
    for k, v in model.state_dict().items():
        arrays[("param/" if k in params else "buffer/") + k] = v
    if optimizer is not None:
        meta["optimizer"] = optimizer.config()
        meta["optimizer_steps"] = int(optimizer.state["steps"])
        if optimizer.params is not None:  # a subset: saved by name
            names = {id(p): n for n, p in model.named_parameters()}
            meta["optimizer_params"] = [names[id(p)] for p in optimizer.params if id(p) in names]
        for i, buf in enumerate(optimizer.state.get("buffers") or []):
            arrays[f"optim/{i}"] = buf
    # load() refuses non-finite values; a file it would refuse is never written.
    bad = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"save: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} contain NaN or inf "
                         f"(the model diverged?); nothing was written to {os.fspath(path)}")
    try:
        arrays["meta"] = np.array(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as e:  # the user's `extra`
        raise ValueError(f"save: extra must hold JSON values (finite numbers, strings, lists, dicts): {e}") from None
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path, arrays):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------------------ loading
def _read(path):
    path = os.fspath(path)
    try:
        # What the zip's directory declares bounds what is inflated: a small file whose members
        # claim gigabytes is refused before any of it is read.
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
        if declared > _MAX_FILE_BYTES:
            raise ValueError(f"its members would take {declared:,} bytes, more than a checkpoint of at most "
                             f"{_MAX_PARAMS:,} parameters can hold")
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # a zip that is not one, truncated, or holding pickles
        raise ValueError(f"load: {path} is not a readable pylenet checkpoint ({type(e).__name__}: {e})") from None
    if "meta" not in files:
        raise ValueError(f"load: {path} is not a pylenet checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(files["meta"]))
    except ValueError as e:
        raise ValueError(f"load: {path} has corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"load: {path} has corrupt metadata (not a JSON object)")
    if meta.get("format") not in (1, CHECKPOINT_FORMAT):
        raise ValueError(f"load: {path} has checkpoint format {meta.get('format')!r}; this pylenet reads "
                         f"formats 1 and {CHECKPOINT_FORMAT}")
    return path, files, meta


def _check_meta(meta):
    """Refuses, with the field's name, any metadata field of the wrong kind or out of range,
    before anything is built from it."""
    from .nn.layers import input_shape_of, normalization_of

    def need(cond, what):
        if not cond:
            raise ValueError(what)

    for key in ("name", "class", "pylenet_version"):
        need(meta.get(key) is None or isinstance(meta[key], str), f"'{key}' must be a string")
    need(meta.get("extra") is None or isinstance(meta["extra"], dict), "'extra' must be a JSON object")
    input_shape_of(meta.get("input_shape"), "input_shape")
    normalization_of(meta.get("normalization"), "normalization")
    steps = meta.get("optimizer_steps", 0)
    need(isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps <= _MAX_STEPS,
         f"'optimizer_steps' must be a whole number between 0 and 2^53, got {steps!r}")
    need(meta.get("optimizer") is None or isinstance(meta["optimizer"], dict), "'optimizer' must be a JSON object")
    names = meta.get("optimizer_params")
    need(names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)),
         "'optimizer_params' must be a list of parameter names")
    if meta["format"] == 1:
        need(isinstance(meta.get("architecture"), list), "'architecture' must be a list of layers")
        return
    tree = meta.get("modules")
    need(isinstance(tree, list) and tree and all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("type"), str)
        and (e.get("config") is None or isinstance(e["config"], dict)) for e in tree)
        and tree[0]["path"] == "", "the module tree is malformed")
    paths = [e["path"] for e in tree]
    need(len(set(paths)) == len(paths), "the module tree names a module twice")
    for e in tree[1:]:
        need(e["path"].rpartition(".")[0] in paths[:paths.index(e["path"])],
             f"module {e['path']!r} comes before its parent")
    graph = meta.get("graph")
    if graph is not None:
        need(isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and isinstance(graph.get("values"), dict)
             and all(isinstance(n, dict) for n in graph["nodes"]), "the graph is malformed")
        input_shape_of(graph.get("input_shape"), "the graph's input_shape")


def _legacy_model(meta):
    """Format 1: a Sequential from its list of layer configs."""
    from .nn import layers as L
    built = []
    for cfg in meta["architecture"]:
        kind = cfg.get("kind")
        if kind == "Conv2d":
            built.append(L.Conv2d(cfg["in"], cfg["out"], tuple(cfg["kernel"]), tuple(cfg["stride"]),
                                  tuple(cfg["padding"]), bias=cfg["bias"]))
        elif kind == "Linear":
            built.append(L.Linear(cfg["in"], cfg["out"], bias=cfg["bias"]))
        elif kind in ("MaxPool2d", "AvgPool2d"):
            square = lambda v: v[0] if v[0] == v[1] else tuple(v)  # noqa: E731 - as the layer was built
            built.append(getattr(L, kind)(square(cfg["kernel"]), square(cfg["stride"]), square(cfg["padding"])))
        elif kind in ("ReLU", "Tanh", "Flatten"):
            built.append(getattr(L, kind)())
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    norm = meta.get("normalization")
    return L.Sequential(*built, input_shape=tuple(meta["input_shape"]), name=str(meta.get("name", "model")),
                        normalization=tuple(norm) if norm else None)


def _expected_shapes(meta):
    """Parameter shapes the module tree's built-in layers will have, computed before building."""
    shapes = {}
    for entry in meta["modules"]:
        t, cfg, p = entry["type"], entry["config"], entry["path"]
        pre = f"{p}." if p else ""
        if cfg is None:
            continue
        if t == "Conv2d":
            k = cfg["kernel_size"]
            k = k if isinstance(k, list) else [k, k]
            shapes[pre + "weight"] = (int(cfg["out_channels"]), int(cfg["in_channels"]), int(k[0]), int(k[1]))
            if cfg.get("bias", True):
                shapes[pre + "bias"] = (int(cfg["out_channels"]),)
        elif t == "Linear":
            shapes[pre + "weight"] = (int(cfg["out_features"]), int(cfg["in_features"]))
            if cfg.get("bias", True):
                shapes[pre + "bias"] = (int(cfg["out_features"]),)
        elif t in ("BatchNorm1d", "BatchNorm2d"):
            c = (int(cfg["num_features"]),)
            if cfg.get("affine", True):
                shapes[pre + "weight"] = shapes[pre + "bias"] = c
            if cfg.get("track_running_stats", True):
                shapes[pre + "running_mean"] = shapes[pre + "running_var"] = c
    return shapes


def _build_tree(meta, files):
    """The model from its module tree (every class built in) or its graph (GraphModule)."""
    known = _containers()
    tree = meta["modules"]
    arrays = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith(("param/", "buffer/"))}
    # Declared sizes are checked against the stored arrays BEFORE anything is allocated.
    for name, shape in _expected_shapes(meta).items():
        if any(d < 1 for d in shape) or int(np.prod(shape, dtype=np.float64)) > _MAX_PARAMS:
            raise ValueError(f"{name} of shape {shape} is impossible or too large")
        if name not in arrays or tuple(arrays[name].shape) != shape:
            got = tuple(arrays[name].shape) if name in arrays else "nothing"
            raise ValueError(f"{name}: the module tree declares shape {shape}, the file holds {got}")
    if all(e["config"] is not None and e["type"] in known for e in tree):
        with seeded(0):  # initial values are overwritten by the file's: draw from a private generator
            return _instantiate(tree, known)
    if not meta.get("graph"):
        raise ValueError(f"it holds a model of user-defined classes ({meta.get('class')}) but no graph to rebuild it "
                         "from; load its weights into your model with pylenet.load(path, model=YourModel())")
    return GraphModule(meta, {k: v for k, v in files.items() if k.startswith(("param/", "buffer/"))})


def _instantiate(tree, known):
    from .nn.layers import Sequential
    made = {}
    for entry in tree:
        cls, cfg, p = known[entry["type"]], dict(entry["config"]), entry["path"]
        if cls is Sequential:
            m = Sequential(input_shape=cfg.get("input_shape"), name=cfg.get("name"),
                           normalization=cfg.get("normalization"))
        else:
            m = cls(**cfg)
        made[p] = m
        if p:
            parent, _, leaf = p.rpartition(".")
            made[parent].add_module(leaf, m)
    return made[""]


def _read_checked(path):
    """_read, then every metadata field checked (_check_meta)."""
    path, files, meta = _read(path)
    try:
        _check_meta(meta)
    except ValueError as e:
        raise ValueError(f"load: {path} holds invalid metadata: {e}") from None
    return path, files, meta


def read_extra(path):
    """The ``extra`` a checkpoint was saved with (checked like everything load() reads)."""
    return _read_checked(path)[2].get("extra") or {}


def load(path, return_optimizer=False, model=None):
    """Rebuilds a model (and optionally its optimizer, with state) from a checkpoint, or loads
    it into ``model`` (an instance of the class it was saved from)."""
    from .nn.layers import input_shape_of, normalization_of
    from .optim import make_optimizer
    path, files, meta = _read_checked(path)
    if model is None:
        try:  # any malformed field is a corrupt checkpoint, not a crash
            if meta["format"] == 1:
                model = _legacy_model(meta)
            else:
                model = _build_tree(meta, files)
                norm = normalization_of(meta.get("normalization"), "normalization")
                if norm:
                    model.normalization = norm
                if meta.get("input_shape") and getattr(model, "input_shape", None) is None:
                    model.input_shape = input_shape_of(meta["input_shape"], "input_shape")
                if isinstance(model, GraphModule):  # a graph that does not trace is refused now, not at use
                    from . import runtime
                    runtime.traced(model, model.input_shape, 2)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, OverflowError, RuntimeError) as e:
            raise ValueError(f"load: {path} holds an invalid model description ({type(e).__name__}: {e})") from None
    state = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith(("param/", "buffer/"))}
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"load: {path}: {e}") from None
    if not return_optimizer:
        return model
    opt = None
    if meta.get("optimizer"):
        try:
            opt = make_optimizer(meta["optimizer"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"load: {path} holds an invalid optimizer config ({type(e).__name__}: {e})") from None
        names = meta.get("optimizer_params")
        if names is not None:  # the optimizer updated these parameters only
            params = dict(model.named_parameters())
            missing = [n for n in names if n not in params] if isinstance(names, list) else ["(not a list)"]
            if missing:
                raise ValueError(f"load: {path}: the optimizer's parameters {missing[:3]} are not the model's")
            opt.params = [params[n] for n in names]
        bufs = [files[f"optim/{i}"] for i in range(2) if f"optim/{i}" in files]
        if bufs:
            from .runtime import parameter_layout
            n = parameter_layout(model)[1]
            if len(bufs) != opt.n_buffers or any(b.shape != (n,) or b.dtype != np.float32 for b in bufs):
                raise ValueError(f"load: optimizer state in {path} does not match the model's {n} parameters")
            if not all(np.isfinite(b).all() for b in bufs):
                raise ValueError(f"load: optimizer state in {path} contains NaN or inf")
            opt.state = {"buffers": [np.array(b) for b in bufs], "steps": int(meta.get("optimizer_steps", 0))}
    return model, opt


# ------------------------------------------------------------------------------ GraphModule
class _Container(Module):
    """A module of a class whose code is not in the checkpoint (it only holds children)."""

    def __init__(self, type_name):
        super().__init__()
        self.__dict__["_type_name"] = type_name

    def __repr__(self):
        return super().__repr__().replace(type(self).__name__, self._type_name, 1)


class GraphModule(Module):
    """A model rebuilt from a checkpoint's graph: the saved class's submodules, parameter
    names and computation; forward() replays the graph (built-in layers are called as modules,
    functional ops as functions, so train()/eval() and tracing behave as in the original)."""

    def __init__(self, meta, arrays):
        super().__init__()
        self.__dict__["_type_name"] = meta.get("class") or "GraphModule"
        self.__dict__["_graph"] = meta["graph"]
        made = {"": self}
        with seeded(0):  # initial values are overwritten by the file's
            for entry in meta["modules"][1:]:
                p, t, cfg = entry["path"], entry["type"], entry["config"]
                m = LAYERS[t](**cfg) if cfg is not None and t in LAYERS else _Container(t)
                parent, _, leaf = p.rpartition(".")
                made[parent].add_module(leaf, m)
                made[p] = m
        # Parameters and buffers the user's own classes held directly.
        for key, arr in arrays.items():
            kind, name = key.split("/", 1)
            owner_path, _, leaf = name.rpartition(".")
            owner = made.get(owner_path)
            if owner is None:
                raise ValueError(f"{key} belongs to no module of the tree")
            if leaf in owner._parameters or leaf in owner._buffers:
                continue
            if kind == "param":
                owner.register_parameter(leaf, Parameter(np.zeros(arr.shape, np.float32)))
            else:
                owner.register_buffer(leaf, np.zeros(arr.shape, arr.dtype))
        self.input_shape = tuple(meta["graph"]["input_shape"])

    def _lookup(self, dotted):
        return _lookup(self, dotted)

    def forward(self, x):
        g = self._graph
        return replay(self, g["nodes"], g["values"], g["input"], x, call_modules=True)[g["output"]]

    def __repr__(self):
        return super().__repr__().replace(type(self).__name__, self._type_name, 1)


def _lookup(model, dotted):
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def replay(model, nodes, values, input_id, x, call_modules=False):
    """Runs a graph's nodes on ``x`` and returns every value computed, {value id: value}.

    nodes: as ``Graph.nodes()`` lists them (or a checkpoint's graph holds them); values:
    {value id: name} of the model's parameters and buffers the graph reads. Each op runs as
    its ``pylenet.functional`` function, so on NumPy arrays every intermediate value comes
    back (pylenet.viz draws them); dropout and batch norm follow ``model.training``.
    call_modules: a node that a built-in layer made (``node["path"]``, as a checkpoint
    records it) calls that layer as a module instead, so that tracing the replay (a
    GraphModule's forward) records the module calls as the original did."""
    env = {input_id: x}
    for vid, name in values.items():
        env[int(vid)] = _lookup(model, name)
    for n in nodes:
        if n["op"] in ("input", "param", "buffer", "labels"):
            continue
        ins = [env.get(i) if i >= 0 else None for i in n["inputs"]]
        if call_modules and n.get("path") is not None and n.get("module"):
            out = _lookup(model, n["path"])(ins[0]) if n["path"] else ins[0]
        else:
            out = _replay(model, n["op"], n["attrs"], ins)
        env[n["outputs"][0]] = out
    return env


def _replay(model, op, a, ins):
    x = ins[0]
    if op == "conv2d":
        return F.conv2d(x, ins[1], ins[2], tuple(a["stride"]), tuple(a["padding"]))
    if op == "linear":
        return F.linear(x, ins[1], ins[2])
    if op in ("max_pool2d", "avg_pool2d"):
        return getattr(F, op)(x, tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"]))
    if op in ("relu", "tanh", "sigmoid"):
        return getattr(F, op)(x)
    if op == "leaky_relu":
        return F.leaky_relu(x, a.get("negative_slope", 0.01))
    if op == "add":
        return F.add(ins[0], ins[1])
    if op == "cat":
        return F.cat(ins, 1)
    if op == "reshape":
        return F.reshape(x, x.shape[0], *a["shape"])
    if op == "dropout":
        return F.dropout(x, a["p"], training=model.training)
    if op == "batch_norm":
        tracking = ins[3] is not None
        return F.batch_norm(x, ins[3], ins[4], ins[1], ins[2], training=model.training or not tracking,
                            momentum=a["momentum"], eps=a["eps"],
                            num_batches_tracked=ins[5] if model.training else None)
    if op in ("softmax", "log_softmax"):
        return getattr(F, op)(x, 1)
    raise ValueError(f"GraphModule: cannot replay op {op!r}")
