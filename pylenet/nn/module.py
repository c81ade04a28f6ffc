"""Module and Parameter: models as Python code, as PyTorch users write them.

Attributes that are modules or parameters register themselves; ``forward()`` says what the
model computes. Calling a module on a NumPy array (or a CuPy array) traces ``forward`` into a
graph once per input shape and mode (``pylenet/graph.py``), compiles it (``pylenet/runtime.py``)
and runs it natively; calling it inside another module's ``forward`` while that one is traced
records its ops into the same graph.

Parameters live in ONE flat native buffer per model: when the outermost module's
``__init__`` returns, its parameters are copied into a zeroed, 64-byte aligned buffer and each
``Parameter`` attribute becomes a view of its slice. The runtime computes on that buffer, so
nothing is copied per call, and whatever a training step writes is at once visible in
``model.fc1.weight`` and ``state_dict()``. A parameter assigned later (``model.head =
nn.Linear(...)``) keeps its own memory: the runtime computes on parameters wherever they are.
"""
import functools
import itertools
import threading
from collections import OrderedDict, namedtuple

import numpy as np

__all__ = ["Module", "Parameter"]

_construction = threading.local()
_versions = itertools.count(1)
# Bumped whenever a parameter, buffer or submodule is assigned to a module that is already
# built (or a model is repacked): compiled graphs and executors are cached under it. A module
# still inside its own __init__ cannot be part of a compiled model, so building new layers
# leaves every cache alone.
_structure = {"version": 0}


def _bump():
    _structure["version"] = next(_versions)


def structure_version():
    return _structure["version"]


# pylenet.graph and pylenet.runtime import this module, so __call__ reaches them through
# these (an import statement per call cost a microsecond of a single image's 20).
@functools.lru_cache(maxsize=None)
def _graph():
    from .. import graph
    return graph


@functools.lru_cache(maxsize=None)
def _runtime():
    from .. import runtime
    return runtime


def _to_numpy(v):
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
        v = v.detach().cpu().numpy()
    elif hasattr(v, "get") and type(v).__module__.startswith("cupy"):
        v = v.get()
    return np.asarray(v)


class Parameter(np.ndarray):
    """A trainable float32 array, registered by the module it is assigned to.

    ``nn.Parameter(array)`` shares the array's memory when it already is float32 and
    contiguous, until the model is built: when the outermost module's ``__init__`` returns, a
    parameter nothing else refers to is copied into the model's flat buffer (the module's
    attribute then is the new Parameter; ``array`` no longer follows it). Keep a reference
    to the Parameter, not to the array, to see the trained values. ``requires_grad=False``
    freezes it: it gets no gradient and no update. Arithmetic on a parameter gives plain
    arrays.
    """

    def __new__(cls, data=None, requires_grad=True):
        a = np.zeros(0, np.float32) if data is None else _to_numpy(data)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"Parameter: expected an array of real numbers, got dtype {a.dtype}")
        p = np.ascontiguousarray(a, dtype=np.float32).view(cls)
        p.requires_grad = bool(requires_grad)
        return p

    def __array_finalize__(self, obj):
        self.requires_grad = getattr(obj, "requires_grad", True)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        if array is self:  # in place (p += 1)
            return self
        plain = array.view(np.ndarray)
        return plain[()] if return_scalar else plain

    def __reduce__(self):  # pickles (and deep-copies) as a Parameter with its flag
        return (Parameter, (np.array(self, dtype=np.float32), self.requires_grad))

    def __repr__(self):
        return "Parameter containing:\n" + np.array_repr(self.view(np.ndarray))

    @property
    def data(self):  # PyTorch spelling: the plain array (shares memory)
        return self.view(np.ndarray)

    @data.setter
    def data(self, value):  # PyTorch's `p.data = t`: new values, in place, of the same shape
        a = _to_numpy(value)
        if a.shape != self.shape:
            raise ValueError(f"Parameter.data: got shape {a.shape}, the parameter has {self.shape}; a compiled "
                             "model holds its memory, so assign a new nn.Parameter to change its shape")
        self[...] = a

    @property
    def shape(self):
        return np.ndarray.shape.__get__(self)

    @shape.setter
    def shape(self, value):  # NumPy would reinterpret the memory a compiled model reads in place
        raise AttributeError("a Parameter's shape cannot change in place; assign a new nn.Parameter")


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _wrap_init(init):
    """Runs a Module subclass's __init__ and, when it is the outermost one of a construction,
    packs the new model's parameters into its flat buffer."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        depth = getattr(_construction, "depth", 0)
        mine = "_building" not in self.__dict__  # the most derived class's __init__ of this object
        if mine:
            self.__dict__["_building"] = True
        _construction.depth = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            _construction.depth = depth
            if mine:
                del self.__dict__["_building"]
        if depth == 0 and "_parameters" in self.__dict__:
            from ..runtime import pack_parameters
            pack_parameters(self)
    __init__._pylenet_wrapped = True
    return __init__


class Module:
    """Base class of every layer and model (``torch.nn.Module``'s interface)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_pylenet_wrapped", False):
            cls.__init__ = _wrap_init(init)

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["training"] = True
        d["_cache"] = {}  # compiled graphs and executors (pylenet/runtime.py)

    # ---- registration ----------------------------------------------------------------
    def _check_init(self, what):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call "
                                 f"(call super().__init__() first in {type(self).__name__}.__init__)")

    def __setattr__(self, name, value):
        d = self.__dict__
        if isinstance(value, Parameter):
            self._check_init("parameters")
            self._forget(name, keep="_parameters")
            d["_parameters"][name] = value
            self._changed()
        elif isinstance(value, Module):
            self._check_init("submodules")
            self._forget(name, keep="_modules")
            d["_modules"][name] = value
            self._changed()
        elif "_parameters" in d and name in d["_parameters"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' "
                                "(an nn.Parameter or None is expected)")
            d["_parameters"][name] = None
            self._changed()
        elif "_buffers" in d and name in d["_buffers"]:
            d["_buffers"][name] = None if value is None else np.asarray(value)
            self._changed()
        elif "_modules" in d and name in d["_modules"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as submodule '{name}' "
                                "(a Module or None is expected)")
            d["_modules"][name] = None
            self._changed()
        else:
            object.__setattr__(self, name, value)

    def _changed(self):
        if "_building" in self.__dict__:
            self.__dict__.get("_cache", {}).clear()  # only its own graphs can know the old structure
        else:
            _bump()

    def _forget(self, name, keep=None):
        """Removes `name` from every registry but `keep` (the one it is about to be set in, so
        that a re-assigned layer keeps its place in the order, as in PyTorch)."""
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if key != keep:
                d[key].pop(name, None)
        d.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if key in d and name in d[key]:
                return d[key][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if key in d and name in d[key]:
                del d[key][name]
                self._changed()
                return
        object.__delattr__(self, name)

    def __dir__(self):
        extra = [*self._parameters, *self._buffers, *self._modules]
        return sorted(set(super().__dir__()) | set(extra))

    def register_parameter(self, name, param):
        self._check_init("parameters")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: '{name}' must be an nn.Parameter or None")
        self._forget(name, keep="_parameters")
        self._parameters[name] = param
        self._changed()

    def register_buffer(self, name, tensor, persistent=True):
        """State that is not trained but belongs to the model (batch norm's running statistics)."""
        self._check_init("buffers")
        self._forget(name, keep="_buffers")
        self._buffers[name] = None if tensor is None else np.asarray(tensor)
        if not persistent:
            self._non_persistent.add(name)
        self._changed()

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a Module")
        self._check_init("submodules")
        self._forget(name, keep="_modules")
        self._modules[name] = module
        self._changed()

    register_module = add_module

    # ---- the model ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define one that says what the "
                                  "module computes")

    def __call__(self, *args, **kwargs):
        tracer = _graph().current_tracer()
        if tracer is not None:
            return tracer.call_module(self, args, kwargs)
        return _runtime().run(self, *args, **kwargs)

    # ---- traversal ------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        memo = set() if memo is None else memo
        if remove_duplicate and id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, key, prefix="", recurse=True, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mp, m in mods:
            for name, v in m.__dict__[key].items():
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield (f"{mp}.{name}" if mp else name), v

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- modes ---------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active, batch norm on batch statistics), or eval with False."""
        if not isinstance(mode, bool):
            raise ValueError("train(mode): mode must be a bool")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Nothing to do: gradients live in the runtime and are overwritten every step."""

    # ---- state ---------------------------------------------------------------------------
    def _state_items(self, prefix=""):
        """(name, array) in PyTorch's state_dict order: per module its parameters, then its
        persistent buffers, then its children."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b
        for name, m in self._modules.items():
            if m is not None:
                yield from m._state_items(prefix + name + ".")

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """Copies of the parameters and persistent buffers under PyTorch's dotted names."""
        out = OrderedDict() if destination is None else destination
        for k, v in self._state_items(prefix):
            out[k] = v if keep_vars else np.array(v, dtype=v.dtype, copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Loads parameters and buffers (NumPy arrays or torch tensors) in place. Checks names,
        shapes, dtypes and values and reports every mismatch at once; nothing is written
        unless everything matches. Returns (missing_keys, unexpected_keys)."""
        try:
            items = dict(state_dict.items())
        except AttributeError:
            raise TypeError(f"load_state_dict: expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}") from None
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in items]
        unexpected = [k for k in items if k not in own]
        problems = []
        if strict:
            problems += [f"missing {k} (expected shape {tuple(own[k].shape)})" for k in missing]
            problems += [f"unexpected {k}" for k in unexpected]
        converted = {}
        for k, target in own.items():
            if k not in items:
                continue
            try:
                got = _to_numpy(items[k])
            except Exception as e:  # noqa: BLE001 - anything that is not an array
                problems.append(f"{k}: not an array ({type(e).__name__}: {e})")
                continue
            if got.shape != target.shape:
                problems.append(f"{k}: shape {tuple(got.shape)}, expected {tuple(target.shape)}")
            elif target.dtype.kind == "i":
                if got.dtype.kind not in "iu":
                    problems.append(f"{k}: dtype {got.dtype}, expected an integer")
                else:
                    converted[k] = got
            elif got.dtype != np.float32:
                problems.append(f"{k}: dtype {got.dtype}, expected float32")
            elif not np.isfinite(got).all():
                problems.append(f"{k}: contains NaN or inf")
            else:
                converted[k] = got
        if problems:
            raise ValueError(f"load_state_dict ({type(self).__name__}): " + "; ".join(problems))
        for k, v in converted.items():
            own[k][...] = v  # in place: the flat buffer and compiled executors keep seeing them
        return IncompatibleKeys(missing, unexpected)

    # ---- printing --------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        children = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()
                    if m is not None]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([f"  {line}" for line in extra.split("\n")] if extra else []) + [f"  {c}" for c in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    def __getstate__(self):  # copies and pickles leave the compiled executors behind
        d = dict(self.__dict__)
        d["_cache"] = {}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)

    # ---- the runtime's entry points (pylenet/runtime.py, training.py, checkpoint.py) --------
    def predict(self, images, return_probs=False, batch_size=256, device="cpu"):
        """Class ids (N,) for a batch or a single image, in evaluation mode; with
        return_probs, also the (N, classes) softmax of the outputs."""
        from ..runtime import predict
        return predict(self, images, return_probs=return_probs, batch_size=batch_size, device=device)

    def summary(self, input_shape=None, batch_size=64, optimizer="sgd", print_fn=print):
        """Per-node output shape, parameters, FLOPs and activation bytes of the traced graph,
        and the memory plan the runtime allocates for training at this batch size."""
        from ..summary import summary
        return summary(self, input_shape=input_shape, batch_size=batch_size, optimizer=optimizer,
                       print_fn=print_fn)

    def save(self, path, optimizer=None, extra=None):
        """Writes an .npz checkpoint (no pickle), atomically: see pylenet.checkpoint."""
        from ..checkpoint import save
        return save(self, path, optimizer=optimizer, extra=extra)


_wrap = _wrap_init(Module.__init__)
Module.__init__ = _wrap
