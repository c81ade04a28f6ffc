"""The built-in layers, with PyTorch's constructors, parameter names, initialisation and printing.

Each is a small Module whose forward() calls pylenet.functional, so it traces into the graph
like any user code. Their constructor arguments (``_config()``) are what a checkpoint stores
to rebuild them.
"""
import math
import numbers
from collections import OrderedDict

import numpy as np

from . import init
from .. import functional as F
from ..functional import _pair, _unsupported as _refuse
from .module import Module, Parameter

__all__ = ["Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Flatten",
           "Dropout", "BatchNorm1d", "BatchNorm2d", "LogSoftmax", "Softmax", "Identity", "Sequential",
           "ModuleList", "LAYERS"]


def _positive(v, name, owner):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= F._MAX_EXTENT:
        raise ValueError(f"{owner}: {name} must be a positive int (at most {F._MAX_EXTENT}), got {v!r}")
    return int(v)


def input_shape_of(v, owner):
    """A model's per-sample input shape, checked: 1 to 3 positive ints, e.g. (1, 28, 28)."""
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"{owner}: input_shape must be a tuple of ints such as (1, 28, 28), got {v!r}")
    dims = tuple(v)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{owner}: input_shape must have 1 to 3 dimensions (C, H, W), got {v!r}")
    return tuple(_positive(d, "input_shape", owner) for d in dims)


def normalization_of(v, owner):
    """(mean, std) of a model's inputs, checked: two finite numbers, std > 0."""
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
        raise ValueError(f"{owner}: normalization must be (mean, std), got {v!r}")
    mean, std = v
    for x in (mean, std):
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            raise ValueError(f"{owner}: normalization must be two finite numbers (mean, std), got {v!r}")
    if not std > 0:
        raise ValueError(f"{owner}: the normalization's std must be > 0, got {std!r}")
    return float(mean), float(std)


class _Layer(Module):
    """A built-in layer: its calls are recorded in the graph under its class name."""
    _builtin_layer = True

    def _config(self):
        raise NotImplementedError

    def reset_parameters(self, rng=None):
        pass


class Conv2d(_Layer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros"):
        super().__init__()
        _refuse("Conv2d", dilation=(dilation, 1), groups=(groups, 1), padding_mode=(padding_mode, "zeros"))
        self.in_channels = _positive(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive(out_channels, "out_channels", "Conv2d")
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _pair(stride, "stride", "Conv2d")
        if padding == "valid":
            padding = 0
        self.padding = _pair(padding, "padding", "Conv2d")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1 and padding >= 0, got kernel_size="
                             f"{self.kernel_size}, stride={self.stride}, padding={self.padding}")
        self.weight = Parameter(np.zeros((self.out_channels, self.in_channels, *self.kernel_size), np.float32))
        self.bias = Parameter(np.zeros(self.out_channels, np.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, rng=None):
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        init.kaiming_uniform_(self.weight, fan_in, rng)
        if self.bias is not None:
            init.kaiming_uniform_(self.bias, fan_in, rng)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def _config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "bias": self.bias is not None}

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
             + (f", padding={self.padding}" if self.padding != (0, 0) else ""))
        return s + (", bias=False" if self.bias is None else "")


class Linear(_Layer):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive(in_features, "in_features", "Linear")
        self.out_features = _positive(out_features, "out_features", "Linear")
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), np.float32))
        self.bias = Parameter(np.zeros(self.out_features, np.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, rng=None):
        init.kaiming_uniform_(self.weight, self.in_features, rng)
        if self.bias is not None:
            init.kaiming_uniform_(self.bias, self.in_features, rng)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Pool(_Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        as_given = lambda v: tuple(v) if isinstance(v, (tuple, list)) else v  # noqa: E731 - printed as PyTorch does
        self.kernel_size = as_given(kernel_size)
        self.stride = self.kernel_size if stride is None else as_given(stride)
        self.padding = as_given(padding)
        k, s, p = (_pair(self.kernel_size, "kernel_size", name), _pair(self.stride, "stride", name),
                   _pair(self.padding, "padding", name))
        if min(k) < 1 or min(s) < 1 or min(p) < 0 or 2 * p[0] > k[0] or 2 * p[1] > k[1]:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1 and padding between 0 and half the "
                             f"kernel, got kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")

    def _config(self):
        as_list = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
        return {"kernel_size": as_list(self.kernel_size), "stride": as_list(self.stride),
                "padding": as_list(self.padding)}


class MaxPool2d(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        _refuse("MaxPool2d", dilation=(dilation, 1), return_indices=(return_indices, False),
                ceil_mode=(ceil_mode, False))
        super().__init__(kernel_size, stride, padding)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation=1, " \
               "ceil_mode=False"


class AvgPool2d(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        _refuse("AvgPool2d", ceil_mode=(ceil_mode, False), count_include_pad=(count_include_pad, True),
                divisor_override=(divisor_override, None))
        super().__init__(kernel_size, stride, padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ReLU(_Layer):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)  # accepted for PyTorch code; the runtime decides what runs in place

    def forward(self, x):
        return F.relu(x)

    def _config(self):
        return {}

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Tanh(_Layer):
    def forward(self, x):
        return F.tanh(x)

    def _config(self):
        return {}


class Sigmoid(_Layer):
    def forward(self, x):
        return F.sigmoid(x)

    def _config(self):
        return {}


class LeakyReLU(_Layer):
    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def _config(self):
        return {"negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Flatten(_Layer):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"Flatten: {name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def _config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(_Layer):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability must be between 0 and 1, got {p!r}")
        self.p = float(p)
        self.inplace = bool(inplace)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def _config(self):
        return {"p": self.p}

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class _BatchNorm(_Layer):
    _ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive(num_features, "num_features", name)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(c, np.float32))
            self.bias = Parameter(np.zeros(c, np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, np.float32))
            self.register_buffer("running_var", np.ones(c, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(b, None)

    def reset_parameters(self, rng=None):
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, x):
        name = type(self).__name__
        if hasattr(x, "ndim") and x.ndim not in self._ranks:
            msg = f"{name} expects a {' or '.join(f'{r}-D' for r in self._ranks)} input, got {x.ndim}-D"
            if hasattr(x, "_tracer"):
                x._tracer.error(msg)
            raise ValueError(msg)
        # Batch statistics while training, or always when no running statistics are kept.
        use_batch = self.training or not self.track_running_stats
        track = self.training and self.track_running_stats
        return F.batch_norm(x, self.running_mean if track or not use_batch else None,
                            self.running_var if track or not use_batch else None, self.weight, self.bias,
                            training=use_batch, momentum=self.momentum, eps=self.eps,
                            num_batches_tracked=self.num_batches_tracked if track else None)

    def _config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    _ranks = (4,)


class _Softmax(_Layer):
    log = False

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.log_softmax(x, self.dim) if self.log else F.softmax(x, self.dim)

    def _config(self):
        return {"dim": self.dim}

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(_Softmax):
    log = True


class Softmax(_Softmax):
    log = False


class Identity(_Layer):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def _config(self):
        return {}


class Sequential(Module):
    """Modules applied in order; their names are their indices ("0.weight") or the keys of an
    OrderedDict. pylenet extras (all optional): ``input_shape`` (C, H, W) of one sample, used by
    summary() and predict(); ``name``; ``seed`` to (re)initialise every layer from its own
    generator; ``normalization`` (mean, std) of the inputs, for predict() on raw pixels."""

    def __init__(self, *args, input_shape=None, name=None, seed=None, normalization=None):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            items = list(args[0].items())
        else:
            if len(args) == 1 and isinstance(args[0], (list, tuple)):
                args = tuple(args[0])
            items = [(str(i), m) for i, m in enumerate(args)]
        for key, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: layer {key} is {type(m).__name__}, not a pylenet Module")
            self.add_module(key, m)
        self.input_shape = input_shape_of(input_shape, "Sequential")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Sequential: name must be a string, got {type(name).__name__}")
        self.name = name or "Sequential"
        self.normalization = normalization_of(normalization, "Sequential")
        if seed is not None:
            self.reset_parameters(seed)
        if self.input_shape is not None:  # with its input known, an impossible stack fails here, not later
            from ..graph import trace
            trace(self, self.input_shape, 1)

    def reset_parameters(self, seed=0):
        """Re-draws every layer's initial weights, in order, from default_rng(seed)."""
        rng = np.random.default_rng(seed)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters(rng)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return mods[idx]

    def __setitem__(self, idx, module):
        """Replaces layer idx (an int, negative from the end), keeping its name."""
        keys = list(self._modules)
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise TypeError(f"Sequential indices must be integers, got {type(idx).__name__}")
        if not -len(keys) <= idx < len(keys):
            raise IndexError(f"Sequential index {idx} is out of range for {len(keys)} layers")
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: layer {idx} must be a pylenet Module, got {type(module).__name__}")
        setattr(self, keys[idx], module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self


class ModuleList(Module):
    """A list of modules, registered under their indices (no forward of its own)."""

    def __init__(self, modules=None):
        super().__init__()
        for m in modules or []:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


LAYERS = {cls.__name__: cls for cls in (Conv2d, Linear, MaxPool2d, AvgPool2d, ReLU, Tanh, Sigmoid, LeakyReLU,
                                        Flatten, Dropout, BatchNorm1d, BatchNorm2d, LogSoftmax, Softmax, Identity)}
