"""Every pylenet op on NumPy arrays, forward and backward.

Layouts are PyTorch's: activations NCHW, conv weights ``(out_c, in_c, kh, kw)``, linear
weights ``(out, in)``, biases ``(out,)``. Inputs of any real dtype and any memory layout are
converted to float32 C-contiguous; outputs are new float32 arrays. ``stride``, ``padding``
and ``kernel_size`` take an int or an ``(h, w)`` pair.

Shape and value errors raise ``ValueError`` naming the op and the shapes; arrays of the
wrong kind (complex, strings, objects, non-integer labels, in-place buffers that are not
writable float32 C-contiguous) raise ``TypeError``. The checks themselves live in the C++
op layer (``csrc/ops/``), so the same rules hold for the training runtime.
"""
import numbers

import numpy as np

from . import _C

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_find_algorithms", "conv2d_workspace_size",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "linear", "linear_backward", "relu", "relu_backward", "tanh", "tanh_backward",
    "softmax_cross_entropy", "sgd_step",
]

CONV_ALGOS = ("naive", "im2col", "direct", "auto", "heuristic")


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

    ``algo``: ``"naive"`` (seven loops), ``"im2col"`` (unfold + GEMM), ``"direct"`` (SIMD over
    output rows; stride 1, small channel counts) or ``"auto"`` (measure once per shape and
    keep the fastest applicable one, as ``cudnnFindConvolutionForwardAlgorithm`` does) or
    ``"heuristic"`` (a fixed rule from the shape, like ``cudnnGetConvolutionForwardAlgorithm``).
    """
    op = "conv2d"
    x, w = _f32(x, "input", op), _f32(w, "weight", op)
    b = None if b is None else _f32(b, "bias", op)
    return _C.conv2d_forward(_handle(), x, w, b, _pair(stride, "stride", op),
                             _pair(padding, "padding", op), _algo(algo))


def conv2d_backward(dy, x, w, stride=1, padding=0, algo="auto"):
    """Gradients of conv2d: returns (dx, dw, db) for grad_output dy (N, K, OH, OW)."""
    op = "conv2d_backward"
    dy, x, w = _f32(dy, "grad_output", op), _f32(x, "input", op), _f32(w, "weight", op)
    s, p, a, h = _pair(stride, "stride", op), _pair(padding, "padding", op), _algo(algo), _handle()
    dx = _C.conv2d_backward_data(h, w, dy, x.shape, s, p, a)
    dw = _C.conv2d_backward_filter(h, x, dy, w.shape, s, p, a)
    db = _C.conv2d_backward_bias(h, dy)
    return dx, dw, db


def conv2d_find_algorithms(x, w, stride=1, padding=0, pass_="forward"):
    """Time every convolution algorithm on these shapes, fastest first.

    Returns ``[(name, seconds, workspace_bytes), ...]``. ``pass_`` is ``"forward"``,
    ``"backward_data"`` or ``"backward_filter"``.
    """
    op = "conv2d"
    return _C.conv2d_find_algorithms(_handle(), pass_, _f32(x, "input", op), _f32(w, "weight", op),
                                     _pair(stride, "stride", op), _pair(padding, "padding", op))


def conv2d_workspace_size(x_shape, w_shape, stride=1, padding=0, algo="im2col", pass_="forward"):
    """Bytes of scratch space ``algo`` needs for this pass (like cudnnGet*WorkspaceSize)."""
    op = "conv2d"
    return _C.conv2d_workspace_size(_handle(), _algo(algo), pass_, list(x_shape), list(w_shape),
                                    _pair(stride, "stride", op), _pair(padding, "padding", op))


# ----------------------------------------------------------------------------- pooling
def _pool(mode, x, kernel_size, stride, padding):
    op = f"{mode}_pool2d"
    k = _pair(kernel_size, "kernel_size", op)
    s = k if stride is None else _pair(stride, "stride", op)
    return op, k, s, _pair(padding, "padding", op)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling; stride defaults to kernel_size; the first maximum of a window wins."""
    op, k, s, p = _pool("max", x, kernel_size, stride, padding)
    return _C.pool2d_forward(_handle(), "max", _f32(x, "input", op), k, s, p)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max_pool2d w.r.t. x: each dy goes to its window's first maximum."""
    op, k, s, p = _pool("max", x, kernel_size, stride, padding)
    op += "_backward"
    return _C.pool2d_backward(_handle(), "max", _f32(x, "input", op), _f32(dy, "grad_output", op), k, s, p)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling; padded cells count as zeros (PyTorch's count_include_pad=True)."""
    op, k, s, p = _pool("avg", x, kernel_size, stride, padding)
    return _C.pool2d_forward(_handle(), "avg", _f32(x, "input", op), k, s, p)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of avg_pool2d w.r.t. x (x supplies the input shape)."""
    op, k, s, p = _pool("avg", x, kernel_size, stride, padding)
    op += "_backward"
    return _C.pool2d_backward(_handle(), "avg", _f32(x, "input", op), _f32(dy, "grad_output", op), k, s, p)


# ----------------------------------------------------------------------------- linear
def linear(x, w, b=None):
    """y = x . w^T + b with x (N, in), w (out, in), b (out,)."""
    op = "linear"
    x, w = _f32(x, "input", op), _f32(w, "weight", op)
    b = None if b is None else _f32(b, "bias", op)
    return _C.linear_forward(_handle(), x, w, b)


def linear_backward(dy, x, w):
    """Gradients of linear: returns (dx, dw, db) for grad_output dy (N, out)."""
    op = "linear_backward"
    dy, x, w, h = _f32(dy, "grad_output", op), _f32(x, "input", op), _f32(w, "weight", op), _handle()
    dx = _C.linear_backward_data(h, dy, w, x.shape)
    dw = _C.linear_backward_weight(h, dy, x, w.shape)
    db = _C.linear_backward_bias(h, dy)
    return dx, dw, db


# ----------------------------------------------------------------------------- activations
def relu(x):
    return _C.activation_forward(_handle(), "relu", _f32(x, "input", "relu"))


def relu_backward(dy, x):
    """dy where x > 0, else 0."""
    op = "relu_backward"
    return _C.activation_backward(_handle(), "relu", _f32(x, "input", op), _f32(dy, "grad_output", op))


def tanh(x):
    return _C.activation_forward(_handle(), "tanh", _f32(x, "input", "tanh"))


def tanh_backward(dy, y):
    """dy * (1 - y^2), where y = tanh(x) is the forward output."""
    op = "tanh_backward"
    return _C.activation_backward(_handle(), "tanh", _f32(y, "output", op), _f32(dy, "grad_output", op))


# ----------------------------------------------------------------------------- loss
def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Returns ``(loss, dlogits)`` with loss a float and dlogits (N, C) = (softmax - onehot) / N.
    """
    op = "softmax_cross_entropy"
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
    C-contiguous arrays. A gradient holding NaN or inf raises and leaves param unchanged.
    """
    op = "sgd_step"
    _inplace(param, "param", op)
    if velocity is not None:
        _inplace(velocity, "velocity", op)
    grad = _f32(grad, "grad", op)
    _C.sgd_step(_handle(), param, grad, velocity, float(lr), float(momentum), float(weight_decay),
                bool(nesterov))
