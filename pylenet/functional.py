"""Every pylenet op: on traced tensors (inside a model's forward), and on arrays, forward and
backward, on the CPU or a CUDA GPU.

Inside a traced ``forward()`` (see ``pylenet/graph.py``) each call adds a node to the model's
graph: ``F.relu(self.conv1(x))`` is how a model says what it computes, exactly as with
``torch.nn.functional``. The same functions called on arrays run the kernels at once.

Layouts are PyTorch's: activations NCHW, conv weights ``(out_c, in_c, kh, kw)``, linear
weights ``(out, in)``, biases ``(out,)``. Inputs of any real dtype and any memory layout are
converted to float32 C-contiguous; outputs are new float32 arrays. ``stride``, ``padding``
and ``kernel_size`` take an int or an ``(h, w)`` pair.

Where an op runs follows its arrays: NumPy arrays (and lists) run the CPU kernels; device
arrays run the CUDA kernels on their GPU, without copies. Device arrays are CuPy arrays,
``pylenet.cuda.Tensor`` and anything else speaking ``__cuda_array_interface__`` or DLPack
(PyTorch, Numba, ...). Outputs are of the caller's kind: CuPy in, CuPy out (a view of
pylenet's memory); otherwise ``pylenet.cuda.Tensor``, which every such library can view.
With CuPy (or PyTorch) inputs the op is ordered with that library's current stream, so its
results can be used there at once, and its inputs freed. Mixing host and device arrays in one call raises ``TypeError``. CuPy is
optional: it is imported only when a CuPy array is passed.

Shape and value errors raise ``ValueError`` naming the op and the shapes; arrays of the
wrong kind (complex, strings, objects, non-integer labels, in-place buffers that are not
writable float32 C-contiguous) raise ``TypeError``. The checks themselves live in the C++
op layer (``csrc/ops/``), shared by both backends, so the same rules hold everywhere.
"""
import numbers

import numpy as np

from . import _C
from . import cuda as _cuda
from .graph import Tensor, current_tracer

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_find_algorithms", "conv2d_workspace_size",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "linear", "linear_backward", "relu", "relu_backward", "tanh", "tanh_backward", "sigmoid", "leaky_relu",
    "add", "cat", "flatten", "reshape", "dropout", "batch_norm", "softmax", "log_softmax",
    "cross_entropy", "nll_loss", "softmax_cross_entropy", "sgd_step",
]

CONV_ALGOS = ("naive", "im2col", "direct", "winograd", "implicit_gemm", "auto", "heuristic")
CUDA_CONV_ALGOS = ("naive", "im2col", "implicit_gemm", "auto", "heuristic")


def _handle():
    return _C.default_handle()


def _traced(*args):
    """True when any argument is a traced Tensor: the call becomes a graph node."""
    return any(isinstance(a, Tensor) for a in args)


def _node(name, inputs, attrs=None):
    """Adds op `name` to the graph being traced; returns its first output."""
    t = next(a for a in inputs if isinstance(a, Tensor))._tracer
    if current_tracer() is not t:
        raise RuntimeError(f"{name}: this tensor belongs to a trace that has ended")
    return t.op(name, inputs, attrs)


def _unsupported(op, **given):
    """Refuses PyTorch arguments pylenet does not implement (rather than ignoring them)."""
    for name, (value, default) in given.items():
        if value != default and not (isinstance(value, (tuple, list)) and all(v == default for v in value)):
            raise ValueError(f"{op}: {name}={value!r} is not supported (only {name}={default!r})")


def _dim(dim, ndim, op):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim {dim!r} is out of range for a {ndim}-D tensor")
    return int(dim) % ndim


def _f32(x, name, op):
    """float32 C-contiguous view or copy of an array-like of real numbers."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{op}: {name} must hold real numbers, got dtype {a.dtype}")
    return np.asarray(a, dtype=np.float32, order="C")  # (ascontiguousarray would make a 0-d array 1-d)


_MAX_EXTENT = _C.MAX_EXTENT  # sizes are bounded natively (check_extent); refused here first for layers


def _pair(v, name, op):
    """An int or a pair of ints -> (h, w)."""
    items = tuple(v) if isinstance(v, (tuple, list, np.ndarray)) else (v, v)
    if len(items) != 2 or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if any(abs(int(i)) > _MAX_EXTENT for i in items):
        raise ValueError(f"{op}: {name} {v!r} is out of range (at most {_MAX_EXTENT})")
    return int(items[0]), int(items[1])


def _algo(algo):
    if not isinstance(algo, str):
        raise TypeError(f"conv2d: algo must be a string, one of {CONV_ALGOS}, got {algo!r}")
    return algo


def _kind(a):
    t = type(a)
    return f"{t.__module__.partition('.')[0]}.{t.__name__}"


class _OnDevice:
    """The CUDA side of one call: device inputs as pylenet.cuda.Tensor views, the caller's
    stream to order with (CuPy's or PyTorch's current one), and outputs converted back to the
    caller's kind."""

    def __init__(self, op, cp, stream):
        self.op = op
        self.native = _cuda._backend()  # RuntimeError naming what is missing
        self.cp = cp
        self.stream = stream

    def _is_cupy(self, a):
        return self.cp is not None and isinstance(a, self.cp.ndarray)

    def _borrow(self, a):
        # CuPy arrays: the op waits on self.stream, CuPy's current stream, instead of the
        # array's CAI 'stream' (the same one).
        return self.native.from_cuda_array(a, False) if self._is_cupy(a) else _cuda.as_tensor(a)

    def f32(self, a, name):
        """A float32 Tensor view; CuPy arrays are converted like NumPy ones on the CPU path."""
        if self._is_cupy(a):
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{self.op}: {name} must hold real numbers, got dtype {a.dtype}")
            a = self.cp.asarray(a, dtype=self.cp.float32, order="C")  # keeps a 0-d array 0-d
        t = self._borrow(a)
        if t.dtype != np.float32:
            raise TypeError(f"{self.op}: {name} must be float32, got {t.dtype} ({_kind(a)}); convert it "
                            "first, or pass a CuPy array (converted automatically)")
        return t

    def labels(self, a, name):
        """An int64 Tensor view of integer labels."""
        if self._is_cupy(a):
            if a.dtype.kind not in "iu":
                raise TypeError(f"{self.op}: {name} must be integers, got dtype {a.dtype}")
            if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
                raise ValueError(f"{self.op}: label {int(a.max())} is out of range")
            a = self.cp.ascontiguousarray(a, dtype=self.cp.int64)
        t = self._borrow(a)
        if t.dtype != np.int64:
            raise TypeError(f"{self.op}: {name} must be int64, got {t.dtype} ({_kind(a)})")
        return t

    def inplace(self, a, name):
        """A writable float32 Tensor view of a buffer the op updates in place."""
        if self._is_cupy(a) and not (a.dtype == np.float32 and a.flags.c_contiguous):
            raise TypeError(f"{self.op}: {name} is updated in place and must be a float32 C-contiguous "
                            f"array, got dtype {a.dtype}, contiguous={a.flags.c_contiguous}")
        t = self._borrow(a)
        if t.dtype != np.float32 or t.readonly:
            raise TypeError(f"{self.op}: {name} is updated in place and must be a writable float32 array, "
                            f"got dtype {t.dtype}, read-only={t.readonly}")
        return t

    def out(self, t):
        """A result in the caller's kind: a CuPy view when CuPy arrays came in, else the Tensor."""
        return self.cp.from_dlpack(t) if self.cp is not None else t


def _on_device(op, *named):
    """None when every array of ``named`` ((name, array) pairs; None skipped) is on the host,
    an _OnDevice when all are device arrays; TypeError naming both kinds when they mix."""
    host = device = first_cupy = first_torch = None
    for name, a in named:
        if a is None:
            continue
        if _cuda._is_device_array(a):
            device = device or (name, a)
            library = type(a).__module__.partition(".")[0]
            if library == "cupy":
                first_cupy = first_cupy if first_cupy is not None else a
            elif library == "torch":
                first_torch = first_torch if first_torch is not None else a
        else:
            host = host or (name, a)
    if device is None:
        return None
    if host is not None:
        raise TypeError(f"{op}: {device[0]} is a device array ({_kind(device[1])}) but {host[0]} is a host "
                        f"array ({_kind(host[1])}); pass all arrays on the same side (on the GPU, e.g. "
                        "cupy.asarray(...), or on the host, e.g. cupy.asnumpy(...))")
    # The library's current stream on the arrays' device, for the op to order with. Imported
    # only once one of its arrays was passed: CuPy and PyTorch stay optional.
    cp = stream = None
    if first_cupy is not None:
        import cupy as cp
        if cp.cuda.runtime.getDevice() == first_cupy.device.id:
            stream = cp.cuda.get_current_stream().ptr
    elif first_torch is not None:
        import torch
        stream = torch.cuda.current_stream(first_torch.device).cuda_stream
    return _OnDevice(op, cp, stream)


def _inplace(a, name, op):
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
            and a.flags.writeable):
        desc = (f"dtype {a.dtype}, contiguous={a.flags.c_contiguous}, writable={a.flags.writeable}"
                if isinstance(a, np.ndarray) else type(a).__name__)
        raise TypeError(f"{op}: {name} is updated in place and must be a writable float32 "
                        f"C-contiguous numpy array, got {desc}")
    return a


# ----------------------------------------------------------------------------- convolution
def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto"):
    """y = x (*) w + b, cross-correlation with zero padding. x (N, C, H, W), w (K, C, R, S).

    ``padding`` is an int, a pair or ``"valid"`` (0); dilation and groups must be 1.
    ``algo`` (arrays only; a compiled model picks per layer): ``"naive"`` (seven loops),
    ``"im2col"`` (unfold + GEMM), ``"direct"`` (CPU only: SIMD over output rows; stride 1,
    small channel counts), ``"winograd"`` (CPU only: F(4x4, 3x3) and F(2x2, 5x5) at stride 1,
    padding smaller than the kernel; a quarter or a third of the multiplications, rounding
    within about 1e-5 of the largest value for 3x3, a few times that for 5x5 filter gradients),
    ``"implicit_gemm"`` (CUDA only: the GEMM with the unfolding done
    while tiles load into shared memory), ``"auto"`` (measure once per shape and keep the
    fastest applicable one, as ``cudnnFindConvolutionForwardAlgorithm`` does) or
    ``"heuristic"`` (a fixed rule from the shape, like ``cudnnGetConvolutionForwardAlgorithm``:
    direct, winograd or im2col on the CPU, implicit_gemm on CUDA). An algorithm of the other
    backend raises ``ValueError``.
    """
    op = "conv2d"
    _unsupported(op, dilation=(dilation, 1), groups=(groups, 1))
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(f"{op}: padding={padding!r} is not supported (an int, a pair, or 'valid')")
        padding = 0
    if _traced(x, w, b):
        return _node(op, [x, w, b], {"stride": _pair(stride, "stride", op), "padding": _pair(padding, "padding", op)})[0]
    d = _on_device(op, ("input", x), ("weight", w), ("bias", b))
    if d is not None:
        bt = None if b is None else d.f32(b, "bias")
        return d.out(d.native.conv2d_forward(d.f32(x, "input"), d.f32(w, "weight"), bt,
                                             _pair(stride, "stride", op), _pair(padding, "padding", op),
                                             _algo(algo), d.stream))
    x, w = _f32(x, "input", op), _f32(w, "weight", op)
    b = None if b is None else _f32(b, "bias", op)
    return _C.conv2d_forward(_handle(), x, w, b, _pair(stride, "stride", op),
                             _pair(padding, "padding", op), _algo(algo))


def conv2d_backward(dy, x, w, stride=1, padding=0, algo="auto"):
    """Gradients of conv2d on arrays: returns (dx, dw, db) for grad_output dy (N, K, OH, OW)."""
    op = "conv2d_backward"
    d = _on_device(op, ("grad_output", dy), ("input", x), ("weight", w))
    if d is not None:
        dy, x, w = d.f32(dy, "grad_output"), d.f32(x, "input"), d.f32(w, "weight")
        s, p, a, n = _pair(stride, "stride", op), _pair(padding, "padding", op), _algo(algo), d.native
        dx = n.conv2d_backward_data(w, dy, x.shape, s, p, a, d.stream)
        dw = n.conv2d_backward_filter(x, dy, w.shape, s, p, a, d.stream)
        db = n.conv2d_backward_bias(dy, d.stream)
        return d.out(dx), d.out(dw), d.out(db)
    dy, x, w = _f32(dy, "grad_output", op), _f32(x, "input", op), _f32(w, "weight", op)
    # one native call: on winograd layers one pass over dy makes all three (the same bits)
    return _C.conv2d_backward(_handle(), x, w, dy, _pair(stride, "stride", op), _pair(padding, "padding", op),
                              _algo(algo))


def conv2d_find_algorithms(x, w, stride=1, padding=0, pass_="forward"):
    """Time every convolution algorithm of the arrays' backend on these shapes, fastest first.

    Returns ``[(name, seconds, workspace_bytes), ...]``. ``pass_`` is ``"forward"``,
    ``"backward_data"`` or ``"backward_filter"``.
    """
    op = "conv2d"
    d = _on_device(op, ("input", x), ("weight", w))
    if d is not None:
        return d.native.conv2d_find_algorithms(pass_, d.f32(x, "input"), d.f32(w, "weight"),
                                               _pair(stride, "stride", op), _pair(padding, "padding", op),
                                               d.stream)
    return _C.conv2d_find_algorithms(_handle(), pass_, _f32(x, "input", op), _f32(w, "weight", op),
                                     _pair(stride, "stride", op), _pair(padding, "padding", op))


def conv2d_workspace_size(x_shape, w_shape, stride=1, padding=0, algo="im2col", pass_="forward",
                          device="cpu"):
    """Bytes of scratch space ``algo`` needs for this pass (like cudnnGet*WorkspaceSize).

    ``device``: ``"cpu"`` (for the default handle's thread count) or ``"cuda"`` (needs a CUDA
    build, not a GPU: the sizes depend on the shapes only).
    """
    op = "conv2d"
    s, p = _pair(stride, "stride", op), _pair(padding, "padding", op)
    if device == "cpu":
        return _C.conv2d_workspace_size(_handle(), _algo(algo), pass_, list(x_shape), list(w_shape), s, p)
    if device == "cuda" or (isinstance(device, str) and device.startswith("cuda:")):
        native = getattr(_C, "cuda", None)
        if native is None:
            raise RuntimeError(f"{op}: this pylenet was built without CUDA kernels, so it has no CUDA "
                               "workspace sizes")
        return native.conv2d_workspace_size(_algo(algo), pass_, list(x_shape), list(w_shape), s, p)
    raise ValueError(f"{op}: unknown device {device!r} (expected 'cpu' or 'cuda')")


# ----------------------------------------------------------------------------- pooling
def _pool(mode, x, kernel_size, stride, padding):
    op = f"{mode}_pool2d"
    k = _pair(kernel_size, "kernel_size", op)
    s = k if stride is None else _pair(stride, "stride", op)
    return op, k, s, _pair(padding, "padding", op)


def _pool_forward(mode, x, kernel_size, stride, padding):
    op, k, s, p = _pool(mode, x, kernel_size, stride, padding)
    if _traced(x):
        return _node(op, [x], {"kernel_size": k, "stride": s, "padding": p})[0]
    d = _on_device(op, ("input", x))
    if d is not None:
        return d.out(d.native.pool2d_forward(mode, d.f32(x, "input"), k, s, p, d.stream))
    return _C.pool2d_forward(_handle(), mode, _f32(x, "input", op), k, s, p)


def _pool_backward(mode, dy, x, kernel_size, stride, padding):
    op, k, s, p = _pool(mode, x, kernel_size, stride, padding)
    op += "_backward"
    d = _on_device(op, ("grad_output", dy), ("input", x))
    if d is not None:
        return d.out(d.native.pool2d_backward(mode, d.f32(x, "input"), d.f32(dy, "grad_output"), k, s, p,
                                              d.stream))
    return _C.pool2d_backward(_handle(), mode, _f32(x, "input", op), _f32(dy, "grad_output", op), k, s, p)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling; stride defaults to kernel_size; the first maximum of a window wins."""
    _unsupported("max_pool2d", dilation=(dilation, 1), ceil_mode=(ceil_mode, False),
                 return_indices=(return_indices, False))
    return _pool_forward("max", x, kernel_size, stride, padding)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max_pool2d w.r.t. x: each dy goes to its window's first maximum."""
    return _pool_backward("max", dy, x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling; padded cells count as zeros (PyTorch's count_include_pad=True)."""
    _unsupported("avg_pool2d", ceil_mode=(ceil_mode, False), count_include_pad=(count_include_pad, True),
                 divisor_override=(divisor_override, None))
    return _pool_forward("avg", x, kernel_size, stride, padding)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of avg_pool2d w.r.t. x (x supplies the input shape)."""
    return _pool_backward("avg", dy, x, kernel_size, stride, padding)


# ----------------------------------------------------------------------------- linear
def linear(x, w, b=None):
    """y = x . w^T + b with x (N, in), w (out, in), b (out,)."""
    op = "linear"
    if _traced(x, w, b):
        return _node(op, [x, w, b])[0]
    d = _on_device(op, ("input", x), ("weight", w), ("bias", b))
    if d is not None:
        bt = None if b is None else d.f32(b, "bias")
        return d.out(d.native.linear_forward(d.f32(x, "input"), d.f32(w, "weight"), bt, d.stream))
    x, w = _f32(x, "input", op), _f32(w, "weight", op)
    b = None if b is None else _f32(b, "bias", op)
    return _C.linear_forward(_handle(), x, w, b)


def linear_backward(dy, x, w):
    """Gradients of linear on arrays: returns (dx, dw, db) for grad_output dy (N, out)."""
    op = "linear_backward"
    d = _on_device(op, ("grad_output", dy), ("input", x), ("weight", w))
    if d is not None:
        dy, x, w, n = d.f32(dy, "grad_output"), d.f32(x, "input"), d.f32(w, "weight"), d.native
        dx = n.linear_backward_data(dy, w, x.shape, d.stream)
        dw = n.linear_backward_weight(dy, x, w.shape, d.stream)
        db = n.linear_backward_bias(dy, d.stream)
        return d.out(dx), d.out(dw), d.out(db)
    dy, x, w, h = _f32(dy, "grad_output", op), _f32(x, "input", op), _f32(w, "weight", op), _handle()
    dx = _C.linear_backward_data(h, dy, w, x.shape)
    dw = _C.linear_backward_weight(h, dy, x, w.shape)
    db = _C.linear_backward_bias(h, dy)
    return dx, dw, db


# ----------------------------------------------------------------------------- activations
def _activation_forward(name, x, slope=0.01):
    if _traced(x):
        return _node(name, [x], {"negative_slope": float(slope)} if name == "leaky_relu" else None)[0]
    d = _on_device(name, ("input", x))
    if d is not None:
        return d.out(d.native.activation_forward(name, d.f32(x, "input"), float(slope), d.stream))
    return _C.activation_forward(_handle(), name, _f32(x, "input", name), float(slope))


def _activation_backward(name, dy, y, y_name, slope=0.01):
    op = f"{name}_backward"
    d = _on_device(op, ("grad_output", dy), (y_name, y))
    if d is not None:
        return d.out(d.native.activation_backward(name, d.f32(y, y_name), d.f32(dy, "grad_output"), float(slope),
                                                  d.stream))
    return _C.activation_backward(_handle(), name, _f32(y, y_name, op), _f32(dy, "grad_output", op), float(slope))


def relu(x, inplace=False):
    """max(x, 0) (NaN stays NaN). ``inplace`` is accepted for PyTorch code and changes nothing."""
    return _activation_forward("relu", x)


def relu_backward(dy, x):
    """dy where x > 0, else 0."""
    return _activation_backward("relu", dy, x, "input")


def tanh(x):
    return _activation_forward("tanh", x)


def tanh_backward(dy, y):
    """dy * (1 - y^2), where y = tanh(x) is the forward output."""
    return _activation_backward("tanh", dy, y, "output")


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _activation_forward("sigmoid", x)


def leaky_relu(x, negative_slope=0.01, inplace=False):
    """x where x >= 0, else negative_slope * x."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
            or not np.isfinite(negative_slope):
        raise ValueError(f"leaky_relu: negative_slope must be a finite number, got {negative_slope!r}")
    return _activation_forward("leaky_relu", x, float(negative_slope))


# ----------------------------------------------------------------------------- structure
def add(a, b):
    """a + b for tensors of the same shape (a residual connection); ``x + y`` does the same."""
    if _traced(a, b):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            t = a if isinstance(a, Tensor) else b
            t._tracer.error("add: both operands must be tensors of the model (no constants or broadcasting)")
        return _node("add", [a, b])[0]
    d = _on_device("add", ("a", a), ("b", b))
    if d is not None:
        return d.out(d.native.add(d.f32(a, "a"), d.f32(b, "b"), d.stream))
    return _C.add(_handle(), _f32(a, "a", "add"), _f32(b, "b", "add"))


def cat(tensors, dim=1):
    """Concatenation along the channels (dim 1), as torch.cat(tensors, dim=1)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    if _traced(*tensors):
        t = next(a for a in tensors if isinstance(a, Tensor))
        if not all(isinstance(a, Tensor) for a in tensors):
            t._tracer.error("cat: every operand must be a tensor of the model")
        if _dim(dim, t.ndim, "cat") != 1:
            t._tracer.error(f"cat: only dim=1 (channels, or features) is supported, got dim={dim}")
        return _node("cat", tensors)[0]
    d = _on_device("cat", *(("tensors", a) for a in tensors))
    if d is not None:
        return d.cp.concatenate([d.cp.asarray(a) for a in tensors], axis=dim) if d.cp is not None else \
            _refuse_device("cat")
    return np.concatenate([_f32(a, "tensors", "cat") for a in tensors], axis=dim)


def _refuse_device(op):
    raise TypeError(f"{op}: on device arrays pass CuPy arrays")


def reshape(x, *shape):
    """x viewed with a new shape (the batch dimension stays first); -1 is inferred."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if not _traced(x):
        return np.reshape(x, shape)
    t = x._tracer
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            t.error(f"view/reshape: sizes must be ints, got {d!r}")
        dims.append(int(d))
    total = x.numel()
    if dims.count(-1) > 1 or any(d < -1 or d == 0 for d in dims):
        t.error(f"view/reshape: invalid shape {tuple(dims)}")
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if -1 in dims:
        if known == 0 or total % known:
            t.error(f"view/reshape: shape {tuple(dims)} is invalid for {x._describe()} "
                    f"({total} values in a batch of {t.batch})")
        dims[dims.index(-1)] = total // known
    if int(np.prod(dims, dtype=np.int64)) != total:
        t.error(f"view/reshape: shape {tuple(dims)} is invalid for {x._describe()} ({total} values)")
    if not dims or dims[0] != t.batch:
        t.error(f"view/reshape: shape {tuple(dims)} would change the batch dimension of {x._describe()} "
                f"(traced with a batch of {t.batch}); keep it first, e.g. x.view(x.size(0), -1)")
    return _node("reshape", [x], {"shape": tuple(dims[1:])})[0]


def flatten(x, start_dim=0, end_dim=-1):
    """torch.flatten: dims start_dim..end_dim merged into one. A model flattens from dim 1."""
    if not _traced(x):
        a = np.asarray(x)
        s, e = _dim(start_dim, a.ndim, "flatten"), _dim(end_dim, a.ndim, "flatten")
        return a.reshape(a.shape[:s] + (-1,) + a.shape[e + 1:]) if s <= e else a
    t, shape = x._tracer, x.shape
    s, e = _dim(start_dim, len(shape), "flatten"), _dim(end_dim, len(shape), "flatten")
    if s == 0:
        t.error("flatten(start_dim=0) would merge the batch into the features; use x.flatten(1) "
                "(or nn.Flatten(), whose start_dim is 1)")
    if s > e:
        return x
    return reshape(x, *shape[:s], -1, *shape[e + 1:])


def dropout(x, p=0.5, training=True, inplace=False):
    """Zeroes each value with probability p and scales the rest by 1/(1-p) while training;
    the identity otherwise. Masks come from a counter-based generator keyed by the seed, the
    step and the element (the same on any thread count, and on the CPU and CUDA)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability must be between 0 and 1, got {p!r}")
    if not training:
        return x
    if _traced(x):
        return _node("dropout", [x], {"p": float(p)})[0]
    from .nn.init import draw_seed
    key = draw_seed()
    d = _on_device("dropout", ("input", x))
    if d is not None:
        return d.out(d.native.dropout(d.f32(x, "input"), float(p), key, d.stream))
    return _C.dropout(_handle(), _f32(x, "input", "dropout"), float(p), key)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               num_batches_tracked=None):
    """Batch normalisation over the channels (dim 1) of (N, C), (N, C, L) or (N, C, H, W), as
    torch.nn.functional.batch_norm: training uses (and, when given, updates in place with
    ``momentum``) the running statistics' batch statistics; evaluation uses the running ones."""
    op = "batch_norm"
    if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                 or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"{op}: momentum must be in [0, 1] or None, got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps!r}")
    if _traced(x):
        nbt = num_batches_tracked if training and running_mean is not None else None
        outs = _node(op, [x, weight, bias, running_mean, running_var, nbt],
                     {"eps": float(eps), "momentum": momentum, "training": bool(training)})
        return outs[0]
    if momentum is None:
        raise ValueError(f"{op}: momentum=None (a cumulative average) needs a model's BatchNorm layer")
    d = _on_device(op, ("input", x), ("running_mean", running_mean), ("running_var", running_var),
                   ("weight", weight), ("bias", bias))
    if d is not None:
        rm = None if running_mean is None else d.inplace(running_mean, "running_mean")
        rv = None if running_var is None else d.inplace(running_var, "running_var")
        g = None if weight is None else d.f32(weight, "weight")
        b = None if bias is None else d.f32(bias, "bias")
        return d.out(d.native.batch_norm(d.f32(x, "input"), rm, rv, g, b, bool(training), float(momentum),
                                         float(eps), d.stream))
    rm = None if running_mean is None else _inplace(running_mean, "running_mean", op)
    rv = None if running_var is None else _inplace(running_var, "running_var", op)
    g = None if weight is None else _f32(weight, "weight", op)
    b = None if bias is None else _f32(bias, "bias", op)
    return _C.batch_norm(_handle(), _f32(x, "input", op), rm, rv, g, b, bool(training), float(momentum), float(eps))


def _softmax(x, dim, log):
    op = "log_softmax" if log else "softmax"
    if dim is None:
        raise ValueError(f"{op}: pass dim (the class dimension, 1 for (N, C) scores)")
    if _traced(x):
        if x.ndim != 2 or _dim(dim, 2, op) != 1:
            x._tracer.error(f"{op}: only dim=1 of (N, C) scores is supported, got dim={dim} for {x._describe()}")
        return _node(op, [x])[0]
    d = _on_device(op, ("input", x))
    a = d.f32(x, "input") if d is not None else _f32(x, "input", op)
    if a.ndim != 2 or _dim(dim, 2, op) != 1:
        raise ValueError(f"{op}: only dim=1 of (N, C) scores is supported, got dim={dim} for shape {tuple(a.shape)}")
    if d is not None:
        return d.out(d.native.softmax(a, bool(log), d.stream))
    return _C.softmax(_handle(), a, bool(log))


def softmax(x, dim=None):
    """exp(x) / sum(exp(x)) over dim 1 of (N, C) scores (shifted by the row maximum)."""
    return _softmax(x, dim, False)


def log_softmax(x, dim=None):
    """x - logsumexp(x) over dim 1 of (N, C) scores."""
    return _softmax(x, dim, True)


# ----------------------------------------------------------------------------- loss
def _labels(labels, op):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{op}: label {labels.max()} is out of range")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _loss_args(op, weight, ignore_index, reduction, label_smoothing=0.0):
    _unsupported(op, weight=(weight, None), ignore_index=(ignore_index, -100), reduction=(reduction, "mean"),
                 label_smoothing=(label_smoothing, 0.0))


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Mean softmax cross-entropy of (N, C) scores against integer labels (N,). In a traced
    loss it is a graph node; on arrays it returns the loss as a float."""
    _loss_args("cross_entropy", weight, ignore_index, reduction, label_smoothing)
    if _traced(input, target):
        return _node("cross_entropy", [input, target])[0]
    return softmax_cross_entropy(input, target)[0]


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Mean negative log-likelihood of (N, C) log-probabilities (e.g. from log_softmax)."""
    _loss_args("nll_loss", weight, ignore_index, reduction)
    if _traced(input, target):
        return _node("nll_loss", [input, target])[0]
    d = _on_device("nll_loss", ("input", input), ("target", target))
    if d is not None:
        return float(d.native.nll_loss(d.f32(input, "input"), d.labels(target, "target"), d.stream))
    return float(_C.nll_loss(_handle(), _f32(input, "input", "nll_loss"), _labels(target, "nll_loss")))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Returns ``(loss, dlogits)`` with loss a float and dlogits (N, C) = (softmax - onehot) / N.
    On a GPU the call waits for the loss (it is returned as a Python float).
    """
    op = "softmax_cross_entropy"
    d = _on_device(op, ("logits", logits), ("labels", labels))
    if d is not None:
        loss, dlogits = d.native.softmax_cross_entropy(d.f32(logits, "logits"), d.labels(labels, "labels"),
                                                       d.stream)
        return float(loss), d.out(dlogits)
    loss, dlogits = _C.softmax_cross_entropy(_handle(), _f32(logits, "logits", op), _labels(labels, op))
    return float(loss), dlogits


# ----------------------------------------------------------------------------- optimizer
def sgd_step(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD update in place, with torch.optim.SGD's semantics (dampening 0).

    ``param`` (and ``velocity``, needed when momentum > 0) must be writable float32
    C-contiguous arrays: NumPy arrays, or device arrays (CuPy, pylenet.cuda.Tensor, ...),
    updated in place on the GPU. A gradient holding NaN or inf raises and leaves param
    unchanged (on a GPU the call waits for that check).
    """
    op = "sgd_step"
    d = _on_device(op, ("param", param), ("grad", grad), ("velocity", velocity))
    if d is not None:
        p = d.inplace(param, "param")
        v = None if velocity is None else d.inplace(velocity, "velocity")
        d.native.sgd_step(p, d.f32(grad, "grad"), v, float(lr), float(momentum), float(weight_decay),
                          bool(nesterov), d.stream)
        return
    _inplace(param, "param", op)
    if velocity is not None:
        _inplace(velocity, "velocity", op)
    grad = _f32(grad, "grad", op)
    _C.sgd_step(_handle(), param, grad, velocity, float(lr), float(momentum), float(weight_decay),
                bool(nesterov))
