"""Tracing: a module's ``forward()`` run on a symbolic input, recorded op by op into a graph.

``trace(model, input_shape, batch)`` calls ``model(x)`` with ``x`` a ``Tensor``: a handle on a
value of the graph that knows its shape but holds no numbers. Every ``pylenet.functional``
op (and ``+``, ``.view()``, ``.flatten()``, ...) called on one adds a node to the native graph
(``csrc/graph/graph.h``), which infers the output shape on the spot; a call that cannot work
fails right there, with the module path and the line of the user's code::

    LeNet.fc1 (model.py:14): Linear expects 400 input features, got 256

Python control flow on shapes works (``x.shape`` and ``x.size()`` are plain ints; the batch
dimension is the traced batch size), but a tensor's values do not exist while tracing, so
``if x.sum() > 0:`` and the like raise ``TraceError``. Parameters and buffers of the model
enter the graph by identity: an array that is neither (a constant created in ``forward``)
is refused with a message saying so.
"""
import os
import sys
import threading

import numpy as np

from . import _C

__all__ = ["Tensor", "TraceError", "Traced", "trace", "current_tracer"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_state = threading.local()


class TraceError(ValueError):
    """A model's forward() cannot be traced: the message names the module and the line."""


def current_tracer():
    return getattr(_state, "tracer", None)


# The files of the framework itself. A model defined inside the package (pylenet/models.py)
# is user code like any other: its forward's lines are the ones errors and summaries name.
_FRAMEWORK_FILES = frozenset(os.path.join(_PACKAGE_DIR, *f.split("/")) for f in (
    "graph.py", "functional.py", "runtime.py", "training.py", "summary.py", "checkpoint.py", "nn/module.py",
    "nn/layers.py", "nn/init.py"))


def _user_frame():
    """The innermost frame outside the framework's own files: the line that made the call."""
    f = sys._getframe(1)
    while f is not None and os.path.abspath(f.f_code.co_filename) in _FRAMEWORK_FILES:
        f = f.f_back
    if f is None:
        return ""
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


class Tensor:
    """A value of the model being traced (what ``forward`` receives and returns while pylenet
    records it). It has a shape — ``(batch, *per_sample)`` for batch tensors — but no values."""

    __slots__ = ("_tracer", "id")

    def __init__(self, tracer, vid):
        self._tracer = tracer
        self.id = vid

    # ---- shape ----------------------------------------------------------------------------
    @property
    def shape(self):
        g = self._tracer.graph
        per = tuple(int(d) for d in g.shape(self.id))
        kind = g.kind(self.id)
        return (self._tracer.batch, *per) if kind == "sample" else per

    def size(self, dim=None):
        s = self.shape
        if dim is None:
            return s
        if not isinstance(dim, (int, np.integer)) or not -len(s) <= dim < len(s):
            self._tracer.error(f"size({dim!r}): dimension out of range for a tensor of shape {self._describe()}")
        return s[dim]

    def dim(self):
        return len(self.shape)

    @property
    def ndim(self):
        return len(self.shape)

    def numel(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self):
        return np.dtype(np.int64) if self._tracer.graph.value(self.id)["is_int"] else np.dtype(np.float32)

    def _describe(self):
        return self._tracer.graph.describe(self.id)

    def __repr__(self):
        return f"Tensor(shape={self._describe()}, traced)"

    # ---- views -------------------------------------------------------------------------------
    def view(self, *shape):
        from . import functional as F
        return F.reshape(self, *shape)

    reshape = view

    def flatten(self, start_dim=0, end_dim=-1):
        from . import functional as F
        return F.flatten(self, start_dim, end_dim)

    # ---- ops as methods and operators ----------------------------------------------------------
    def __add__(self, other):
        from . import functional as F
        return F.add(self, other)

    __radd__ = __add__

    def relu(self):
        from . import functional as F
        return F.relu(self)

    def tanh(self):
        from . import functional as F
        return F.tanh(self)

    def sigmoid(self):
        from . import functional as F
        return F.sigmoid(self)

    def softmax(self, dim):
        from . import functional as F
        return F.softmax(self, dim)

    def log_softmax(self, dim):
        from . import functional as F
        return F.log_softmax(self, dim)

    # ---- what a traced tensor cannot do --------------------------------------------------------
    def _values_needed(self, what):
        self._tracer.error(f"{what} needs the tensor's values, which do not exist while pylenet traces "
                           "forward() (control flow may depend on shapes, x.shape / x.size(), not on values)")

    def __bool__(self):
        self._values_needed("using a tensor as a condition (if/while/and/or)")

    def __int__(self):
        self._values_needed("int(tensor)")

    def __float__(self):
        self._values_needed("float(tensor)")

    def __index__(self):
        self._values_needed("using a tensor as an index")

    def __len__(self):
        return self.shape[0] if self.shape else self._values_needed("len() of a scalar")

    def __iter__(self):
        self._values_needed("iterating over a tensor")

    def __array__(self, *args, **kwargs):
        self._values_needed("converting a tensor to a NumPy array")

    def item(self):
        self._values_needed("tensor.item()")

    def numpy(self):
        self._values_needed("tensor.numpy()")

    def __getitem__(self, key):
        self._tracer.error("indexing or slicing a tensor is not an op pylenet's graph has; use the ops of "
                           "pylenet.functional (e.g. F.cat to join, x.view(...) to reshape)")

    def _unsupported(self, *args):
        self._tracer.error("only + (residual add) is supported between tensors in a traced model; "
                           "multiplication, subtraction, division and comparison are not graph ops")

    __mul__ = __rmul__ = __sub__ = __rsub__ = __truediv__ = __rtruediv__ = _unsupported
    __matmul__ = __neg__ = __pow__ = __lt__ = __le__ = __gt__ = __ge__ = _unsupported

    def __eq__(self, other):  # identity, so tensors can be dict keys and compared with `is`
        return self is other

    __hash__ = object.__hash__


class Traced:
    """The result of a trace: the native graph and how its values map to the model."""

    def __init__(self, tracer, output):
        self.graph = tracer.graph
        self.params = tracer.param_values   # name -> value id
        self.buffers = tracer.buffer_values
        self.output = output
        self.node_modules = tracer.node_modules  # node index -> (path, class name) for leaf-module calls
        self.batch_dependent = None  # runtime.batch_dependent, computed on first use


class Tracer:
    def __init__(self, root, input_shape, batch):
        from .nn.module import Module  # noqa: F401 - the import order of the package
        self.graph = _C.Graph()
        self.root = root
        self.batch = int(batch)
        from .nn.layers import input_shape_of
        self.input_shape = input_shape_of(input_shape, "trace")
        self.root_name = type(root).__name__
        self.paths = {id(m): path for path, m in root.named_modules()}
        # The model's parameters and buffers, by identity; each enters the graph when first used.
        self.known = {id(p): ("param", name, p) for name, p in root.named_parameters()}
        self.known.update({id(b): ("buffer", name, b) for name, b in root.named_buffers()})
        self.values = {}  # id(array) -> graph value id
        self.param_values, self.buffer_values = {}, {}
        self.stack = []  # (module, path) of the calls being traced
        self.node_modules = {}

    # ---- scopes -------------------------------------------------------------------------------
    def scope(self):
        if not self.stack:
            return self.root_name
        path = self.stack[-1][1]
        return f"{self.root_name}.{path}" if path else self.root_name

    def leaf_module(self):
        """The class name of the built-in layer whose forward() is running, if any."""
        if self.stack and getattr(type(self.stack[-1][0]), "_builtin_layer", False):
            return type(self.stack[-1][0]).__name__
        return ""

    def error(self, message, where=None):
        where = where or _user_frame()
        raise TraceError(f"{self.scope()}{f' ({where})' if where else ''}: {message}")

    def call_module(self, module, args, kwargs):
        path = self.paths.get(id(module))
        if path is None:
            self.error(f"{type(module).__name__} is called in forward() but is not a submodule of "
                       f"{self.root_name}: create layers in __init__ and assign them to attributes")
        self.stack.append((module, path))
        try:
            return module.forward(*args, **kwargs)
        finally:
            self.stack.pop()

    # ---- ops ---------------------------------------------------------------------------------
    def value_of(self, a, what):
        if a is None:
            return -1
        if isinstance(a, Tensor):
            if a._tracer is not self:
                self.error(f"{what} comes from another trace")
            return a.id
        vid = self.values.get(id(a))
        if vid is None and id(a) in self.known:
            kind, name, arr = self.known[id(a)]
            if kind == "param":
                vid = self.graph.add_param(name, list(arr.shape), bool(getattr(arr, "requires_grad", True)))
                self.param_values[name] = vid
            else:
                if arr.dtype not in (np.float32, np.int64) or not arr.flags.c_contiguous:
                    self.error(f"buffer {name} must be a C-contiguous float32 (or int64) array, got {arr.dtype}")
                vid = self.graph.add_buffer(name, list(arr.shape), arr.dtype.kind in "iu")
                self.buffer_values[name] = vid
            self.values[id(a)] = vid
        if vid is None:
            kind = type(a).__name__
            self.error(f"{what} is a {kind} that is not a parameter or buffer of {self.root_name}: arrays a "
                       "model uses must be registered (nn.Parameter(...) as an attribute, or register_buffer)")
        return vid

    def op(self, name, inputs, attrs=None):
        where = _user_frame()
        ids = [self.value_of(a, f"argument {i} of {name}") for i, a in enumerate(inputs)]
        module = self.leaf_module()
        first = self.graph.num_nodes
        try:
            outs = self.graph.add(name, ids, attrs or {}, self.scope(), module, where)
        except ValueError as e:
            raise TraceError(f"{self.scope()}{f' ({where})' if where else ''}: {e}") from None
        if module:
            self.node_modules[first] = (self.stack[-1][1], module)
        return [Tensor(self, o) for o in outs]


class _Active:
    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        self.previous = current_tracer()
        _state.tracer = self.tracer

    def __exit__(self, *exc):
        _state.tracer = self.previous


def trace(model, input_shape, batch=1, loss=None):
    """Traces ``model(x)`` for inputs of per-sample shape ``input_shape`` (and, with ``loss``,
    ``loss(model(x), labels)``) in the model's current mode. Returns a ``Traced``."""
    if current_tracer() is not None:
        raise TraceError("trace: already tracing (a model was called on arrays inside a traced forward?)")
    tracer = Tracer(model, input_shape, batch)
    x = Tensor(tracer, tracer.graph.add_input(list(tracer.input_shape)))
    with _Active(tracer):
        out = model(x)
        if not isinstance(out, Tensor) or out._tracer is not tracer:
            raise TraceError(f"{tracer.root_name}.forward() must return the tensor it computed from its input, "
                             f"got {type(out).__name__}")
        try:
            tracer.graph.set_output(out.id)
        except ValueError as e:
            raise TraceError(f"{tracer.root_name}: {e}") from None
        if loss is not None:
            labels = Tensor(tracer, tracer.graph.add_labels())
            lv = loss(out, labels)
            if not isinstance(lv, Tensor) or lv._tracer is not tracer:
                raise TraceError(f"the loss function must return the loss it computed (F.cross_entropy or "
                                 f"F.nll_loss of the output), got {type(lv).__name__}")
            try:
                tracer.graph.set_loss(lv.id)
            except ValueError as e:
                raise TraceError(f"loss ({getattr(loss, '__name__', 'loss')}): {e}") from None
    return Traced(tracer, out.id)
