"""Float64 NumPy reference implementations of every pylenet op.

These are written for clarity, not speed.  Every function converts its
inputs to float64 and returns float64 results; the test-suite compares
pylenet's float32 outputs against them.  Layouts follow PyTorch: NCHW
activations, conv weights (out_c, in_c, kh, kw), linear weights (out, in).

Correctness of this module against torch (float64) is checked by the
scratch script used while writing the suite, and by the float64
finite-difference checks in ``test_gradcheck.py``.
"""

import numpy as np


def pair(v):
    """Normalise an int or an (h, w) pair to a tuple of two ints."""
    if isinstance(v, (tuple, list)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


def out_size(size, k, s, p):
    """Output length of a conv/pool along one axis (floor mode)."""
    return (size + 2 * p - k) // s + 1


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _window(xp, p, q, sh, sw, oh, ow):
    """View of the padded input that kernel tap (p, q) sees for every output.

    Result has shape (N, C, oh, ow): element [n, c, i, j] is
    xp[n, c, i*sh + p, j*sw + q].
    """
    return xp[:, :, p:p + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw]


def _pad(x, ph, pw, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


# --------------------------------------------------------------------------
# convolution (cross-correlation, zero padding)
# --------------------------------------------------------------------------

def conv2d(x, w, b=None, stride=1, padding=0):
    x, w = _f64(x), _f64(w)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    n, c, h, wd = x.shape
    oc, ic, kh, kw = w.shape
    assert c == ic
    oh, ow = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    xp = _pad(x, ph, pw)
    y = np.zeros((n, oc, oh, ow))
    # y[n, o, i, j] = sum_{c, p, q} xp[n, c, i*sh+p, j*sw+q] * w[o, c, p, q]
    for p in range(kh):
        for q in range(kw):
            y += np.einsum("nchw,oc->nohw", _window(xp, p, q, sh, sw, oh, ow), w[:, :, p, q])
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0):
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    n, c, h, wd = x.shape
    oc, ic, kh, kw = w.shape
    oh, ow = dy.shape[2], dy.shape[3]
    xp = _pad(x, ph, pw)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for p in range(kh):
        for q in range(kw):
            win = _window(xp, p, q, sh, sw, oh, ow)
            dw[:, :, p, q] = np.einsum("nohw,nchw->oc", dy, win)
            _window(dxp, p, q, sh, sw, oh, ow)[...] += np.einsum("nohw,oc->nchw", dy, w[:, :, p, q])
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------

def _pool_windows(xp, kh, kw, sh, sw, oh, ow):
    """Stack every window of the padded input: shape (N, C, oh, ow, kh*kw),
    the last axis enumerating the window in row-major (p, q) order."""
    taps = [_window(xp, p, q, sh, sw, oh, ow) for p in range(kh) for q in range(kw)]
    return np.stack(taps, axis=-1)


def _pool_geometry(x, kernel_size, stride, padding):
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    ph, pw = pair(padding)
    assert ph <= kh // 2 and pw <= kw // 2
    h, wd = x.shape[2], x.shape[3]
    return kh, kw, sh, sw, ph, pw, out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)


def _max_pool_argmax(x, kernel_size, stride, padding):
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(x, kernel_size, stride, padding)
    xp = _pad(x, ph, pw, value=-np.inf)  # padded cells never win
    win = _pool_windows(xp, kh, kw, sh, sw, oh, ow)
    # np.argmax returns the FIRST maximum: the tie rule of pylenet.
    return win, np.argmax(win, axis=-1), (kh, kw, sh, sw, ph, pw, oh, ow)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    x = _f64(x)
    win, idx, _ = _max_pool_argmax(x, kernel_size, stride, padding)
    return np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    dy, x = _f64(dy), _f64(x)
    _, idx, (kh, kw, sh, sw, ph, pw, oh, ow) = _max_pool_argmax(x, kernel_size, stride, padding)
    n, c, h, wd = x.shape
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for i in range(oh):
        for j in range(ow):
            p, q = np.divmod(idx[:, :, i, j], kw)  # winning tap, per (n, c)
            rows = i * sh + p
            cols = j * sw + q
            nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
            # overlapping windows accumulate
            np.add.at(dxp, (nn, cc, rows, cols), dy[:, :, i, j])
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    x = _f64(x)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(x, kernel_size, stride, padding)
    xp = _pad(x, ph, pw)  # padded zeros count (count_include_pad=True)
    return _pool_windows(xp, kh, kw, sh, sw, oh, ow).sum(axis=-1) / (kh * kw)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    dy, x = _f64(dy), _f64(x)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(x, kernel_size, stride, padding)
    n, c, h, wd = x.shape
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for p in range(kh):
        for q in range(kw):
            _window(dxp, p, q, sh, sw, oh, ow)[...] += dy / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + wd]


# --------------------------------------------------------------------------
# fully connected
# --------------------------------------------------------------------------

def linear(x, w, b=None):
    x, w = _f64(x), _f64(w)
    y = x @ w.T
    if b is not None:
        y = y + _f64(b)[None, :]
    return y


def linear_backward(dy, x, w):
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# --------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------

def relu(x):
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def relu_backward(dy, x):
    dy, x = _f64(dy), _f64(x)
    return np.where(x > 0, dy, 0.0)


def tanh(x):
    return np.tanh(_f64(x))


def tanh_backward(dy, y):
    dy, y = _f64(dy), _f64(y)
    return dy * (1.0 - y * y)


# --------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy and its gradient w.r.t. the logits (stable)."""
    z = _f64(logits)
    labels = np.asarray(labels).astype(np.int64)
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_sum
    loss = -log_p[np.arange(n), labels].mean()
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1.0
    return float(loss), d / n


# --------------------------------------------------------------------------
# optimiser
# --------------------------------------------------------------------------

def sgd_step(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD step (dampening 0), in place on float64 arrays."""
    g = _f64(grad) + weight_decay * param
    if momentum != 0.0:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity.copy()
    param -= lr * g
