"""Every pylenet op on arrays, forward and backward, on the CPU or a CUDA GPU.

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

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_find_algorithms", "conv2d_workspace_size",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "linear", "linear_backward", "relu", "relu_backward", "tanh", "tanh_backward",
    "softmax_cross_entropy", "sgd_step",
]

CONV_ALGOS = ("naive", "im2col", "direct", "implicit_gemm", "auto", "heuristic")
CUDA_CONV_ALGOS = ("naive", "im2col", "implicit_gemm", "auto", "heuristic")


def _handle():
    return _C.default_handle()


def _f32(x, name, op):
    """float32 C-contiguous view or copy of an array-like of real numbers."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{op}: {name} must hold real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(v, name, op):
    """An int or a pair of ints -> (h, w)."""
    items = tuple(v) if isinstance(v, (tuple, list, np.ndarray)) else (v, v)
    if len(items) != 2 or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
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
            a = self.cp.ascontiguousarray(a, dtype=self.cp.float32)
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
def conv2d(x, w, b=None, stride=1, padding=0, algo="auto"):
    """y = x (*) w + b, cross-correlation with zero padding. x (N, C, H, W), w (K, C, R, S).

    ``algo``: ``"naive"`` (seven loops), ``"im2col"`` (unfold + GEMM), ``"direct"`` (CPU only:
    SIMD over output rows; stride 1, small channel counts), ``"implicit_gemm"`` (CUDA only: the
    GEMM with the unfolding done while tiles load into shared memory), ``"auto"`` (measure once
    per shape and keep the fastest applicable one, as ``cudnnFindConvolutionForwardAlgorithm``
    does) or ``"heuristic"`` (a fixed rule from the shape, like
    ``cudnnGetConvolutionForwardAlgorithm``: direct or im2col on the CPU, implicit_gemm on CUDA).
    An algorithm of the other backend raises ``ValueError``.
    """
    op = "conv2d"
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
    """Gradients of conv2d: returns (dx, dw, db) for grad_output dy (N, K, OH, OW)."""
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
    s, p, a, h = _pair(stride, "stride", op), _pair(padding, "padding", op), _algo(algo), _handle()
    dx = _C.conv2d_backward_data(h, w, dy, x.shape, s, p, a)
    dw = _C.conv2d_backward_filter(h, x, dy, w.shape, s, p, a)
    db = _C.conv2d_backward_bias(h, dy)
    return dx, dw, db


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


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling; stride defaults to kernel_size; the first maximum of a window wins."""
    return _pool_forward("max", x, kernel_size, stride, padding)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max_pool2d w.r.t. x: each dy goes to its window's first maximum."""
    return _pool_backward("max", dy, x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling; padded cells count as zeros (PyTorch's count_include_pad=True)."""
    return _pool_forward("avg", x, kernel_size, stride, padding)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of avg_pool2d w.r.t. x (x supplies the input shape)."""
    return _pool_backward("avg", dy, x, kernel_size, stride, padding)


# ----------------------------------------------------------------------------- linear
def linear(x, w, b=None):
    """y = x . w^T + b with x (N, in), w (out, in), b (out,)."""
    op = "linear"
    d = _on_device(op, ("input", x), ("weight", w), ("bias", b))
    if d is not None:
        bt = None if b is None else d.f32(b, "bias")
        return d.out(d.native.linear_forward(d.f32(x, "input"), d.f32(w, "weight"), bt, d.stream))
    x, w = _f32(x, "input", op), _f32(w, "weight", op)
    b = None if b is None else _f32(b, "bias", op)
    return _C.linear_forward(_handle(), x, w, b)


def linear_backward(dy, x, w):
    """Gradients of linear: returns (dx, dw, db) for grad_output dy (N, out)."""
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
def _activation_forward(name, x):
    d = _on_device(name, ("input", x))
    if d is not None:
        return d.out(d.native.activation_forward(name, d.f32(x, "input"), d.stream))
    return _C.activation_forward(_handle(), name, _f32(x, "input", name))


def _activation_backward(name, dy, y, y_name):
    op = f"{name}_backward"
    d = _on_device(op, ("grad_output", dy), (y_name, y))
    if d is not None:
        return d.out(d.native.activation_backward(name, d.f32(y, y_name), d.f32(dy, "grad_output"), d.stream))
    return _C.activation_backward(_handle(), name, _f32(y, y_name, op), _f32(dy, "grad_output", op))


def relu(x):
    return _activation_forward("relu", x)


def relu_backward(dy, x):
    """dy where x > 0, else 0."""
    return _activation_backward("relu", dy, x, "input")


def tanh(x):
    return _activation_forward("tanh", x)


def tanh_backward(dy, y):
    """dy * (1 - y^2), where y = tanh(x) is the forward output."""
    return _activation_backward("tanh", dy, y, "output")


# ----------------------------------------------------------------------------- loss
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
    logits = _f32(logits, "logits", op)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{op}: label {labels.max()} is out of range")
    loss, dlogits = _C.softmax_cross_entropy(_handle(), logits, np.ascontiguousarray(labels, dtype=np.int64))
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
