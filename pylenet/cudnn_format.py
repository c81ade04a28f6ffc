"""Read and write the weight files of NVIDIA's cuDNN MNIST sample (``tbennun/cudnn-training``).

That sample (one file, ``lenet.cu``) trains the LeNet variant

    conv1 20@5x5 -> maxpool 2/2 -> conv2 50@5x5 -> maxpool 2/2 -> ip1 800->500 -> ReLU -> ip2 500->10 -> softmax

and, with ``--save_data`` / ``--pretrained``, writes / reads its parameters as
eight headerless files of raw host ``float`` values (``fwrite``/``fread``; 4-byte
IEEE-754, little-endian on every host CUDA runs on, so this module always uses
``'<f4'``). pylenet's ``cudnn_lenet`` model is the PyTorch

    nn.Sequential(Conv2d(1,20,5), MaxPool2d(2), Conv2d(20,50,5), MaxPool2d(2),
                  Flatten(), Linear(800,500), ReLU(), Linear(500,10))

whose ``state_dict()`` keys are ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...,
``"7.bias"``. The file <-> key table is :data:`CUDNN_FILES`.

Layouts, and the lenet.cu code that fixes them
----------------------------------------------
Result: **every file is the C-order (row-major) float32 content of the matching
PyTorch tensor; no transpose and no reordering is needed.** Why, file by file:

``conv1.bin`` (20,1,5,5), ``conv2.bin`` (50,20,5,5)
    ``ConvBiasLayer::pconv`` (``in_channels*out_channels*k*k`` floats) is saved
    and loaded as is by ``ConvBiasLayer::ToFile`` / ``FromFile``. It is consumed
    by ``cudnnConvolutionForward`` through the filter descriptor built in
    ``TrainingContext::SetFwdConvolutionTensors``:
    ``cudnnSetFilter4dDescriptor(filterDesc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
    out_channels, in_channels, kernel_size, kernel_size)``, i.e. KCRS =
    PyTorch's ``(out, in, kH, kW)``. The convolution descriptor is
    ``cudnnSetConvolution2dDescriptor(convDesc, 0,0, 1,1, 1,1,
    CUDNN_CROSS_CORRELATION, ...)``: no padding, stride 1, dilation 1,
    cross-correlation -- exactly what ``nn.Conv2d`` computes, so the kernel is
    not flipped either.

``conv1.bias.bin`` (20,), ``conv2.bias.bin`` (50,)
    ``ConvBiasLayer::pbias``, added by ``cudnnAddTensor`` with
    ``conv{1,2}BiasTensor`` = NCHW ``(1, out_channels, 1, 1)``: one value per
    output channel, same as ``Conv2d.bias``.

``ip1.bin`` (500,800), ``ip2.bin`` (10,500)
    ``FullyConnectedLayer::pneurons`` (``inputs*outputs`` floats), saved/loaded
    as is. ``TrainingContext::ForwardPropagation`` computes the layer with
    ``cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m=outputs, n=batch, k=inputs,
    &alpha, A=pfc, lda=inputs, B=x, ldb=inputs, &beta, C=y, ldc=outputs)``.
    cuBLAS is column-major: with ``OP_T`` and ``lda=inputs`` the buffer ``A`` is
    an ``inputs x outputs`` column-major matrix, element ``(i, o)`` at
    ``A[o*inputs + i]`` -- which, read row-major, is an ``(outputs, inputs)``
    array ``W[o, i]``: precisely ``nn.Linear.weight``. (The source comment
    ``fc1 = pfc1'*pool2`` speaks of the column-major ``in x out`` view; reading
    it as a row-major ``(in, out)`` array and transposing would be wrong.)
    ``TrainingContext::Backpropagation`` agrees: the weight gradient is
    ``cublasSgemm(OP_N, OP_T, m=inputs, n=outputs, k=batch, ..., ldc=inputs)``,
    the same ``inputs x outputs`` column-major shape.

``ip1.bias.bin`` (500,), ``ip2.bias.bin`` (10,)
    ``FullyConnectedLayer::pbias``, added with ``cublasSgemm(OP_N, OP_N,
    m=outputs, n=batch, k=1, A=pbias, lda=outputs, B=onevec, ldb=1, beta=1,
    C=y, ldc=outputs)``, i.e. ``y[b, o] += bias[o]``.

Order of ip1's 800 inputs
    The ``B`` operand of the fc1 GEMM is the ``pool2`` buffer itself (NCHW
    ``pool2Tensor`` = ``(batch, 50, 4, 4)``) with ``ldb=inputs=800``: column
    ``b`` is sample ``b``'s contiguous 800 floats, index ``c*16 + h*4 + w`` --
    the same order ``nn.Flatten`` gives on an NCHW ``(N, 50, 4, 4)`` tensor.
    Hence no permutation of ip1's columns.

Other facts relevant to a faithful port (they do not change the files):
pooling is ``cudnnSetPooling2dDescriptor(CUDNN_POOLING_MAX, ..., 2,2, 0,0, 2,2)``
(= ``MaxPool2d(2)``); the only activation is the ReLU after ip1
(``fc1Activation``); the output goes through ``cudnnSoftmaxForward(...,
CUDNN_SOFTMAX_MODE_CHANNEL, ...)``, while the PyTorch model returns the logits
(same argmax). Some forks of the sample add a ReLU after each convolution; the
file layout is the same, the network is not. Files are named in ``main()``:
``conv1.ToFile("conv1")``, ``conv2.ToFile("conv2")``, ``fc1.ToFile("ip1")``,
``fc2.ToFile("ip2")``; ``ToFile(prefix)`` writes ``prefix.bin`` and
``prefix.bias.bin``.

``FromFile`` never checks how many floats ``fread`` returned, so a short file
silently leaves parameters unset there; :func:`import_cudnn_weights` therefore
insists on exact sizes and finite values, and :func:`export_cudnn_weights`
writes each file under a temporary name and ``os.replace``-s it into place.

This module uses only the standard library and NumPy and imports no other
pylenet module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from . import atomic

__all__ = [
    "CUDNN_FILES",
    "STATE_DICT_SHAPES",
    "export_cudnn_weights",
    "import_cudnn_weights",
]

#: Shapes of the ``cudnn_lenet`` state_dict (PyTorch's, for the Sequential above).
STATE_DICT_SHAPES = {
    "0.weight": (20, 1, 5, 5),
    "0.bias": (20,),
    "2.weight": (50, 20, 5, 5),
    "2.bias": (50,),
    "5.weight": (500, 800),
    "5.bias": (500,),
    "7.weight": (10, 500),
    "7.bias": (10,),
}

#: cudnn-training file name -> (state_dict key, number of float32 values in the file).
#: Each file holds that tensor's values in C order, little-endian float32, no header.
CUDNN_FILES = {
    "conv1.bin": ("0.weight", 500),
    "conv1.bias.bin": ("0.bias", 20),
    "conv2.bin": ("2.weight", 25000),
    "conv2.bias.bin": ("2.bias", 50),
    "ip1.bin": ("5.weight", 400000),
    "ip1.bias.bin": ("5.bias", 500),
    "ip2.bin": ("7.weight", 5000),
    "ip2.bias.bin": ("7.bias", 10),
}

_FILE_DTYPE = np.dtype("<f4")


def _as_numpy(value):
    """A NumPy view of an array-like (NumPy array, torch tensor, ...), without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if callable(detach):  # torch.Tensor (possibly requiring grad / on a device)
        value = detach()
        cpu = getattr(value, "cpu", None)
        if callable(cpu):
            value = cpu()
    return np.asarray(value)


def _nonfinite_summary(arr):
    bad = ~np.isfinite(arr)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return None
    flat = arr.reshape(-1)
    first = int(np.flatnonzero(bad.reshape(-1))[0])
    kinds = []
    if np.isnan(arr).any():
        kinds.append("NaN")
    if np.isinf(arr).any():
        kinds.append("inf")
    return f"{n_bad} non-finite value(s) ({'/'.join(kinds)}), first at flat index {first} ({flat[first]!r})"


def _validate_state_dict(state_dict):
    """Return {key: float32 C-contiguous array} or raise one ValueError listing every problem."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"export_cudnn_weights: expected a state_dict mapping, got {type(state_dict).__name__}"
        )
    problems = []
    arrays = {}
    missing = [k for k in STATE_DICT_SHAPES if k not in state_dict]
    if missing:
        problems.append("missing key(s): " + ", ".join(repr(k) for k in missing))
    unexpected = [k for k in state_dict if k not in STATE_DICT_SHAPES]
    if unexpected:
        problems.append("unexpected key(s): " + ", ".join(repr(k) for k in unexpected))
    for key, shape in STATE_DICT_SHAPES.items():
        if key not in state_dict:
            continue
        try:
            arr = _as_numpy(state_dict[key])
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed
            problems.append(f"{key!r}: cannot convert to an array ({exc})")
            continue
        if arr.dtype.kind != "f":
            problems.append(f"{key!r}: dtype {arr.dtype} is not a floating-point type")
            continue
        if tuple(arr.shape) != shape:
            problems.append(f"{key!r}: shape {tuple(arr.shape)}, expected {shape}")
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            arr32 = np.ascontiguousarray(arr, dtype=np.float32)
        bad = _nonfinite_summary(arr32)
        if bad is not None:
            extra = "" if arr.dtype == np.float32 else f" after conversion from {arr.dtype} to float32"
            problems.append(f"{key!r}: {bad}{extra}")
            continue
        arrays[key] = arr32
    if problems:
        raise ValueError(
            "export_cudnn_weights: invalid state_dict for the cudnn_lenet model:\n  - "
            + "\n  - ".join(problems)
        )
    return arrays


def export_cudnn_weights(state_dict, folder):
    """Write a ``cudnn_lenet`` state_dict as cudnn-training's eight ``.bin`` files.

    ``state_dict``: mapping with exactly the keys/shapes of :data:`STATE_DICT_SHAPES`
    (NumPy arrays or torch tensors, any floating dtype; written as float32).
    Everything is validated first; all problems (missing / unexpected keys, wrong
    shapes, non-float dtypes, NaN/inf) are reported together in one ``ValueError``
    and nothing is written.

    ``folder`` is created if needed. Every file is first written completely
    (and fsync-ed) under a temporary name in ``folder``; only when all eight
    temporaries exist are they ``os.replace``-d onto the final names, so an
    interrupted export never leaves a half-written ``.bin`` file (a failure while
    writing the temporaries leaves the previous files untouched and removes the
    temporaries).

    Returns the list of the paths written, in :data:`CUDNN_FILES` order.
    """
    arrays = _validate_state_dict(state_dict)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)

    pending = []  # (tmp_path, final_path)
    try:
        for name, (key, count) in CUDNN_FILES.items():
            data = arrays[key].astype(_FILE_DTYPE, copy=False).tobytes(order="C")
            assert len(data) == 4 * count
            final = os.path.join(folder, name)
            atomic.sweep_stale(final)
            fd, tmp = atomic.open_temp(final)
            pending.append((tmp, final))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        atomic.commit(pending)
    except BaseException:
        atomic.discard([tmp for tmp, _ in pending])
        raise
    return [final for _, final in pending]


def import_cudnn_weights(folder):
    """Read cudnn-training's eight ``.bin`` files into a ``cudnn_lenet`` state_dict.

    Returns ``{key: numpy.ndarray}`` with the keys and shapes of
    :data:`STATE_DICT_SHAPES` (float32, native byte order, C-contiguous, writable;
    ``torch.from_numpy`` / ``load_state_dict`` accept them directly).

    Raises ``ValueError`` when ``folder`` is not a directory, when files are
    missing (all of them named in one message), when a file does not hold exactly
    the expected number of bytes (``4 * count``; the message names the file, the
    expected and the actual byte size), or when a file contains NaN or inf.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(
            f"import_cudnn_weights: {folder!r} is not a directory (expected the files "
            + ", ".join(CUDNN_FILES)
            + ")"
        )
    missing, problems = [], []
    for name, (_, count) in CUDNN_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            missing.append(name)
        elif not os.path.isfile(path):
            problems.append(f"{name}: not a regular file")
        else:
            size = os.path.getsize(path)
            if size != 4 * count:
                problems.append(_size_message(name, count, size))
    if missing:
        problems.insert(0, f"missing file(s): {', '.join(missing)}")
    if problems:
        raise ValueError(
            f"import_cudnn_weights: cannot load cudnn-training weights from {folder!r}:\n  - "
            + "\n  - ".join(problems)
        )

    result, bad = {}, []
    for name, (key, count) in CUDNN_FILES.items():
        with open(os.path.join(folder, name), "rb") as fh:
            raw = fh.read(4 * count + 1)
        if len(raw) != 4 * count:  # the file changed since it was measured
            raise ValueError(
                f"import_cudnn_weights: {folder!r}: " + _size_message(name, count, len(raw), "read")
            )
        arr = np.frombuffer(raw, dtype=_FILE_DTYPE).astype(np.float32)  # native order, owned copy
        summary = _nonfinite_summary(arr)
        if summary is not None:
            bad.append(f"{name}: {summary}")
        result[key] = arr.reshape(STATE_DICT_SHAPES[key])
    if bad:
        raise ValueError(
            f"import_cudnn_weights: non-finite weights in {folder!r}:\n  - " + "\n  - ".join(bad)
        )
    return {key: result[key] for key in STATE_DICT_SHAPES}


def _size_message(name, count, actual, verb="has"):
    expected = 4 * count
    diff = actual - expected
    if diff % 4 == 0:
        detail = f"{abs(diff) // 4} float(s) {'too many' if diff > 0 else 'too few'}"
    else:
        detail = "not a whole number of float32 values"
    return (
        f"{name}: expected {expected} bytes ({count} float32 values), "
        f"{verb} {actual} bytes ({detail})"
    )
