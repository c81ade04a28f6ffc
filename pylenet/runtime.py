"""The runtime's Python side: a module's graph compiled into a native executor, run on arrays.

    step = pylenet.compile(model, optimizer=opt, loss=F.cross_entropy, batch_size=64)
    for images, labels in my_batches:
        loss = step(images, labels)      # one native step: forward, loss, backward, update

``compile`` (and ``pylenet.train``) traces ``model.forward`` in training mode with the loss
(``pylenet/graph.py``), and the executor (``csrc/runtime/executor.h``) differentiates it,
plans its memory and runs each step in one native call with the GIL released. Calling a model
on an array, ``predict`` and ``evaluate`` trace the model in its current mode (eval: dropout
off, batch norm on its running statistics) and use an inference executor, cached on the model
per input shape, mode, loss, structure version, capacity, device, thread count and conv
algorithm.

Every executor computes on the model's flat parameter buffer (see ``pylenet/nn/module.py``)
and its buffers (running statistics) in place: nothing is copied per call on the CPU. On a
GPU the executor keeps device copies, uploaded before a call and copied back after training.
"""
import math
import os
import sys

import numpy as np

from . import _C
from . import cuda as _cuda
from .graph import trace
from .nn.layers import _positive as _positive_int
from .nn.module import Module, Parameter, structure_version

__all__ = ["compile", "Step", "pack_parameters", "parameter_layout", "run", "predict", "evaluate_arrays",
           "DEFAULT_INFERENCE_BATCH"]

DEFAULT_INFERENCE_BATCH = 256


# ------------------------------------------------------------------------------ parameters
def _movable(module):
    """ids of the module's parameters that nothing outside its modules refers to: no optimizer,
    variable, view or compiled executor holds them, so they can be moved without anyone
    noticing (the module dicts are updated with the new objects)."""
    entries = {}
    for m in module.modules():
        for k in m._parameters:
            if m._parameters[k] is not None:
                e = entries.setdefault(id(m._parameters[k]), [m._parameters[k], 0])
                e[1] += 1
    # A movable parameter is referenced by its modules' dicts, by `entries`, and by getrefcount.
    return {key for key, e in entries.items() if sys.getrefcount(e[0]) == e[1] + 2}


def pack_parameters(module):
    """Copies the module's parameters into one new flat native buffer (zeroed, 64-byte
    aligned) and makes each Parameter attribute a view of its slice, in named_parameters()
    order. Called when a model's outermost __init__ returns, so a model built in one piece
    (``nn.Sequential(nn.Conv2d(...), ...)``, a class whose __init__ makes its layers) has one
    buffer. A parameter something else refers to (an optimizer, a variable, a trained model's
    compiled executors) keeps its object and its memory: identity matters more than one buffer,
    and the runtime computes on parameters wherever they are. Returns the buffer, or None."""
    movable = _movable(module)
    named = [(n, p) for n, p in module.named_parameters() if id(p) in movable]
    if not named:
        return None
    buf = _C.host_buffer(int(sum(p.size for _, p in named)))
    views, off = {}, 0
    for _, p in named:
        v = buf[off:off + p.size].reshape(p.shape).view(Parameter)
        v[...] = p
        v.requires_grad = getattr(p, "requires_grad", True)
        v._store = buf
        views[id(p)] = v
        off += p.size
    for m in module.modules():
        for k, p in m._parameters.items():
            if p is not None and id(p) in views:
                m._parameters[k] = views[id(p)]
    # No structure change to announce: names and shapes stay, and nothing compiled held the
    # moved parameters (an executor or a cached walk of the model would have made them
    # unmovable), so every cache is still right.
    return buf


class _Tree:
    """What the runtime reads of a model's structure on every call, walked once per structure
    version: its modules, its named parameters and their places in the flat layout."""

    def __init__(self, module):
        self.modules = tuple(module.modules())
        self.params = tuple(module.named_parameters())
        self.offsets, self.total = {}, 0
        for name, p in self.params:
            self.offsets[name] = self.total
            self.total += p.size
        self.eval_modes = (False,) * len(self.modules)  # modes() in evaluation mode

    def modes(self):
        return tuple([m.training for m in self.modules])

    def requires_grad(self):
        return tuple(bool(getattr(p, "requires_grad", True)) for _, p in self.params)


def _tree(module):
    cache = module.__dict__["_cache"]
    key = ("tree", structure_version())
    t = cache.get(key)
    if t is None:
        for k in [k for k in cache if k[0] == "tree"]:
            del cache[k]
        t = cache[key] = _Tree(module)
    return t


def parameter_layout(module):
    """({name: offset}, total): each parameter's place in the model's flat layout (the order
    of named_parameters()), which the gradients and the optimizer state follow. For a model
    built in one piece it is also where the parameters are in their buffer."""
    t = _tree(module)
    return dict(t.offsets), t.total


# ------------------------------------------------------------------------------ compiling
def _threads():
    return _C.default_threads()  # pylenet.get_num_threads(), without the import on every call


def _modes(module):
    return _tree(module).modes()


def traced(module, input_shape, batch, loss=None):
    """The module's graph for this per-sample input shape, in its current mode (cached)."""
    key = ("trace", tuple(input_shape), _modes(module), loss, structure_version())
    cache = module.__dict__["_cache"]
    t = cache.get(key)
    if t is None:
        if len(cache) > 64:  # shapes and modes come and go: keep the cache bounded
            cache.clear()
        t = cache[key] = trace(module, input_shape, batch, loss=loss)
    module.__dict__["_last_input_shape"] = tuple(input_shape)  # what save() records the graph with
    return t


_CPU = ("cpu", 0)


def _device(device, op):
    from .training import device_index
    index = device_index(device, op)
    return ("cpu", 0) if index is None else ("cuda", index)


def build_executor(module, t, *, capacity, device=("cpu", 0), optimizer=None, conv_algo="heuristic", seed=0,
                   device_rules=False, fuse=True):
    """A native executor of traced graph `t` on the module's parameters and buffers where they
    live: for training when an optimizer is given (its state buffers are bound too), else
    inference. Tests: device_rules applies the CUDA backend's instruction fusions on the CPU
    too; fuse=False leaves them out on CUDA, and the CPU's max pooling folded into the
    convolution before it (to compare the fused kernels' bits)."""
    offsets, total = parameter_layout(module)
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    train = optimizer is not None
    if train:
        updated = optimizer._resolve(module)
        for name, vid in t.params.items():
            t.graph.set_trainable(vid, bool(getattr(params[name], "requires_grad", True)) and
                                  (updated is None or id(params[name]) in updated))
    state = optimizer._state_buffers(total) if train else []
    config = {"device": device[0], "cuda_device": device[1], "threads": _threads() if device[0] == "cpu" else 1,
              "capacity": int(capacity), "conv_algo": conv_algo, "train": train,
              "optimizer": optimizer.spec() if train else None, "seed": int(seed), "device_rules": bool(device_rules),
              "fuse": bool(fuse)}
    try:
        ex = _C.Executor(t.graph, config, total, {vid: params[name] for name, vid in t.params.items()},
                         {vid: offsets[name] for name, vid in t.params.items()},
                         {vid: buffers[name] for name, vid in t.buffers.items()}, state)
    except ValueError as e:
        raise ValueError(f"{type(module).__name__}: {e}") from None
    if train:
        ex.optimizer_steps = int(optimizer.state["steps"])
    if device[0] == "cuda":
        ex.cuda_graphs = cuda_graphs_default()
    return ex


def cuda_graphs_default():
    """$PYLENET_CUDA_GRAPHS: 1 captures a GPU training epoch's full steps (and an evaluation's
    full batches) as one CUDA graph each and replays it (bit-identical to the eager steps); 0 or
    unset runs every step eagerly. Off by default until the graph path has been verified on a GPU."""
    value = os.environ.get("PYLENET_CUDA_GRAPHS", "").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("", "0", "off", "false", "no"):
        return False
    raise ValueError(f"PYLENET_CUDA_GRAPHS must be 0 or 1, got {value!r}")


def batch_dependent(t):
    """Whether a traced graph's result depends on the whole call (dropout, or batch norm on
    batch statistics): such a forward runs as one batch, with fresh dropout masks."""
    if t.batch_dependent is None:
        t.batch_dependent = any(n["op"] == "dropout" or (n["op"] == "batch_norm" and n["attrs"].get("training"))
                                for n in t.graph.nodes())
    return t.batch_dependent


def _executor_key(input_shape, modes, loss, capacity, device, conv_algo):
    return ("exec", tuple(input_shape), modes, loss, structure_version(), int(capacity), device, _threads(), conv_algo)


def inference_executor(module, input_shape, capacity, device=("cpu", 0), loss=None, conv_algo="heuristic",
                       trace_batch=None):
    """A cached inference executor for the module in its current mode, for calls of up to
    `capacity` samples. trace_batch: the batch size forward() sees if it has to be traced (the
    caller's, so that trace errors show the user's numbers); default the capacity."""
    t = traced(module, input_shape, trace_batch or capacity, loss)
    key = _executor_key(input_shape, _modes(module), loss, capacity, device, conv_algo)
    cache = module.__dict__["_cache"]
    ex = cache.get(key)
    if ex is None:
        ex = cache[key] = build_executor(module, t, capacity=capacity, device=device, conv_algo=conv_algo)
    return ex


# ------------------------------------------------------------------------------ inputs
def as_batch(module, images, op):
    """Float32 C-contiguous (N, *input) from a batch or one sample. A model with an
    ``input_shape`` (C, H, W) also takes grey images without the channel axis."""
    x = np.asarray(images)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{op}: inputs must hold real numbers, got dtype {x.dtype}")
    shape = getattr(module, "input_shape", None)
    if shape:
        c, h, w = shape if len(shape) == 3 else (None, None, None)
        if c == 1 and x.ndim == 3 and x.shape[1:] == (h, w):  # grey images without the C axis
            x = x[:, None]
        elif c == 1 and x.ndim == 2 and x.shape == (h, w):    # one grey image
            x = x[None, None]
        elif x.ndim == len(shape):                            # one sample
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{op}: expected inputs of shape (N, {', '.join(map(str, shape))}) or one sample "
                             f"{tuple(shape)}, got {tuple(np.shape(images))}")
    elif x.ndim < 2:
        raise ValueError(f"{op}: expected a batch (N, ...) of inputs, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{op}: no inputs given")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{op}: the inputs contain NaN or inf")
    return x


def run(module, *args, **kwargs):
    """model(x) on an array: the compiled graph's output for a NumPy array (CuPy in, CuPy out).

    In training mode dropout is active and batch norm uses (and updates the running
    statistics with) the whole call's batch statistics, as in PyTorch; model.eval() first for
    inference."""
    name = type(module).__name__
    if kwargs or len(args) != 1:
        raise TypeError(f"{name}: a model called on arrays takes one input (a batch), got {len(args)} "
                        f"positional and {len(kwargs)} keyword arguments")
    x = args[0]
    on_gpu = _cuda._is_device_array(x)
    device = ("cpu", 0)
    if on_gpu:
        if type(x).__module__.partition(".")[0] != "cupy":
            raise TypeError(f"{name}: call a model on a NumPy or a CuPy array (convert a "
                            f"{type(x).__module__}.{type(x).__name__} with cupy.asarray first)")
        import cupy as cp
        device = ("cuda", int(x.device.id))
        x = cp.asnumpy(x)
    x = as_batch(module, x, name)
    # Calls of up to the standard capacity look their executor up under one key of everything
    # it depends on (a single image's call is then mostly native time); the first builds it.
    cache = module.__dict__["_cache"]
    key = ("run", x.shape[1:], _modes(module), structure_version(), _threads(), device) \
        if len(x) <= DEFAULT_INFERENCE_BATCH else None
    hit = cache.get(key) if key else None
    if hit is None:
        whole = batch_dependent(traced(module, x.shape[1:], min(len(x), DEFAULT_INFERENCE_BATCH)))
        # One executor serves every call of up to its capacity; a batch-dependent forward needs
        # the whole call in one batch.
        ex = inference_executor(module, x.shape[1:], max(len(x), DEFAULT_INFERENCE_BATCH) if whole
                                else DEFAULT_INFERENCE_BATCH, device)
        if key:
            cache[key] = (ex, whole)
    else:
        ex, whole = hit
        module.__dict__["_last_input_shape"] = x.shape[1:]  # as traced() records it
    if device[0] == "cuda":
        ex.upload_state()
    seed = None
    if whole:  # a batch-dependent forward (dropout in training mode) draws its masks' seed
        from .nn.init import draw_seed
        seed = draw_seed()
    out, _ = ex.forward(x, None, True, seed)
    if device[0] == "cuda" and whole:
        ex.download_state()  # running statistics
    if on_gpu:
        import cupy as cp
        return cp.asarray(out)
    return out


class _EvalMode:
    """The module in evaluation mode for a block; every module's own flag restored after."""

    def __init__(self, module, training=False):
        self.module, self.training = module, training

    def __enter__(self):
        self.modules = _tree(self.module).modules  # walked once per structure, not per call
        self.saved = [m.training for m in self.modules]
        if any(flag is not self.training for flag in self.saved):
            self.module.train(self.training)

    def __exit__(self, *exc):
        for m, flag in zip(self.modules, self.saved):
            m.__dict__["training"] = flag


def softmax_rows(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict(module, images, return_probs=False, batch_size=DEFAULT_INFERENCE_BATCH, device="cpu"):
    """Class ids (N,) in evaluation mode; with return_probs also the (N, classes) softmax."""
    _positive_int(batch_size, "batch_size", "predict")
    dev = _CPU if isinstance(device, str) and device == "cpu" else _device(device, "predict")
    x = as_batch(module, images, "predict")
    # The evaluation-mode executor that an earlier call built, looked up without switching the
    # modules' modes back and forth: most of a single image's Python time (cudnn_lenet: 84 ->
    # ~70 us a call, model(x) 66).
    ex = None
    if dev[0] == "cpu":
        ex = module.__dict__["_cache"].get(_executor_key(x.shape[1:], _tree(module).eval_modes, None, batch_size, dev,
                                                         "heuristic"))
    if ex is not None:
        module.__dict__["_last_input_shape"] = x.shape[1:]  # as traced() records it
        out, _ = ex.forward(x, None, True)
    else:
        with _EvalMode(module):
            ex = inference_executor(module, x.shape[1:], batch_size, dev, trace_batch=min(batch_size, len(x)))
            if dev[0] == "cuda":
                ex.upload_state()
            out, _ = ex.forward(x, None, True)
    if out.ndim != 2:
        raise ValueError(f"predict: the model's output {out.shape} is not (N, classes) scores")
    if not return_probs:
        return out.argmax(axis=1)
    probs = softmax_rows(out)
    return probs.argmax(axis=1), probs


def evaluate_arrays(module, images, labels, batch_size, device, loss):
    """(loss sum, correct, samples) of the module in evaluation mode."""
    dev = _device(device, "evaluate")
    with _EvalMode(module):
        ex = inference_executor(module, images.shape[1:], batch_size, dev, loss=loss,
                                trace_batch=min(batch_size, len(images)))
        if dev[0] == "cuda":
            ex.upload_state()
        _, st = ex.forward(images, labels, False)
    return st




# ------------------------------------------------------------------------------ compile
class Step:
    """A compiled training step for a user's own loop: ``step(images, labels)`` runs forward,
    loss, backward and the optimizer update natively and returns the batch's mean loss. The
    model's parameters (and state_dict()) show the update at once. The graph is traced on the
    first call (per-sample input shape from the images) and again if that shape or the model's
    mode changes. The learning rate is the optimizer's ``lr`` at each call.

    Divergence raises RuntimeError: a non-finite output before anything changes; an update
    that overflows a parameter (a huge rate) after it, with those values lost. A step keeps no
    copy of the model (``train`` keeps one per epoch and rolls back to it); keep a
    ``state_dict()`` to go back to if your loop needs one."""

    def __init__(self, model, optimizer, loss, batch_size, device, conv_algo, seed):
        from .optim import make_optimizer
        from . import functional as F
        if not isinstance(model, Module):
            raise TypeError(f"compile: expected a pylenet Module, got {type(model).__name__}")
        self.model = model
        self.optimizer = make_optimizer(optimizer)
        self.loss = loss or F.cross_entropy
        self.batch_size = _positive_int(batch_size, "batch_size", "compile")
        self.device = _device(device, "compile")
        self.conv_algo = conv_algo
        if seed is None:
            from .nn.init import draw_seed
            seed = draw_seed()
        self.seed = int(seed)
        self._ex, self._key = None, None
        self._profiling, self._profiled_steps = False, 0

    def executor(self, input_shape):
        # Recompiled when the input shape, a module's mode or the model's structure changes, a
        # parameter is frozen or unfrozen, or the optimizer's state arrays were replaced.
        tree = _tree(self.model)
        state = self.optimizer._state_buffers(tree.total)
        key = (tuple(input_shape), tree.modes(), structure_version(), tree.requires_grad(),
               tuple(id(b) for b in state))
        if self._ex is None or key != self._key:
            steps = self._ex.optimizer_steps if self._ex is not None else None
            t = traced(self.model, input_shape, self.batch_size, self.loss)
            self._ex = build_executor(self.model, t, capacity=self.batch_size, device=self.device,
                                      optimizer=self.optimizer, conv_algo=self.conv_algo, seed=self.seed)
            if steps is not None:
                self._ex.optimizer_steps = steps
            self._key = key
            if self._profiling:  # a new program: its own instructions and times
                self._ex.set_profiling(True)
                self._profiled_steps = 0
        return self._ex

    def __call__(self, images, labels):
        x = as_batch(self.model, images, "step")
        y = np.asarray(labels)
        if y.dtype.kind not in "iu":
            raise TypeError(f"step: labels must be integers, got dtype {y.dtype}")
        if len(x) > self.batch_size:
            raise ValueError(f"step: a batch of {len(x)} exceeds the compiled batch size {self.batch_size}")
        ex = self.executor(x.shape[1:])
        lr = float(self.optimizer.lr)
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"step: the optimizer's lr must be a finite number >= 0, got {lr}")
        if self.device[0] == "cuda":
            ex.upload_state()
        st = ex.train_step(x, np.ascontiguousarray(y, dtype=np.int64), lr)
        if self.device[0] == "cuda":
            ex.download_state()
        self.optimizer.state["steps"] = int(ex.optimizer_steps)
        if self._profiling:
            self._profiled_steps += 1
        return st["loss_sum"] / st["samples"]

    def set_profiling(self, on=True):
        """Times every instruction of the following steps (and resets the times); see
        profile(). Profiling costs a clock read per instruction and chunk (on CUDA also a
        synchronisation), so leave it off when measuring speed."""
        self._profiling = bool(on)
        self._profiled_steps = 0
        if self._ex is not None:
            self._ex.set_profiling(self._profiling)

    def profile(self):
        """Where the profiled steps spent their time, in execution order: one dict per
        instruction (``op``, ``scope``: the module path of the layer it belongs to, ``phase``, ``batch``: a batch-level
        instruction, ``algo``: a convolution's algorithm, ``seconds`` per step, ``share`` of the
        step), then ``update`` (gradient sums and the optimizer). On the CPU the seconds are
        summed over the worker threads, so they add up to thread time, not wall time."""
        if self._ex is None or not self._profiling:
            raise RuntimeError("profile(): call set_profiling(True), then run some steps")
        if self._profiled_steps == 0:
            raise RuntimeError("profile(): no step has run since profiling was turned on")
        times, nodes = self._ex.profile(), self._ex.graph().nodes()
        rows = [dict(d, scope=nodes[d["node"]]["scope"] if 0 <= d["node"] < len(nodes) else "",
                     seconds=times[d["index"]] / self._profiled_steps) for d in self._ex.instructions()]
        rows.append({"index": len(times) - 1, "op": "update", "node": -1, "scope": "", "phase": -1, "batch": True,
                     "algo": "", "seconds": times[-1] / self._profiled_steps})
        total = sum(r["seconds"] for r in rows) or 1.0
        for r in rows:
            r["share"] = r["seconds"] / total
        return rows

    def grads(self):
        """{name: gradient} of the last step (views of the executor's gradient buffer on the
        CPU, host copies from a GPU)."""
        if self._ex is None:
            raise RuntimeError("grads(): no step has run yet")
        flat = self._ex.grads()
        offsets, _ = parameter_layout(self.model)
        return {name: flat[offsets[name]:offsets[name] + p.size].reshape(p.shape)
                for name, p in self.model.named_parameters()}

    def memory_plan(self):
        if self._ex is None:
            raise RuntimeError("memory_plan(): no step has run yet (the input shape is not known)")
        return self._ex.memory_plan()


def compile(model, optimizer=None, loss=None, batch_size=64, device="cpu", conv_algo="heuristic", seed=None):
    """A native training step for the model (see Step). ``optimizer``: an Optimizer or a name
    (default SGD lr 0.01); ``loss``: F.cross_entropy (default), F.nll_loss or a function of
    (output, labels) made of them; ``seed`` keys the dropout masks (default: drawn from
    pylenet.manual_seed's generator)."""
    return Step(model, optimizer, loss, batch_size, device, conv_algo, seed)
