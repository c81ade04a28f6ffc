"""PyTorch models in: ``pylenet.from_torch(module, input_shape)``.

A ``torch.nn.Module`` built from the ops pylenet has becomes a pylenet module with the same
module tree and names (``state_dict()`` key for key, ``num_batches_tracked`` included), the same
weights and the same outputs. Its ``forward()`` is read with ``torch.fx``: the layers
(``nn.Conv2d``, ``nn.Linear``, ...) become pylenet's layers with the same constructor
arguments; ``torch.nn.functional`` calls, tensor methods, ``+`` and shape arithmetic
(``x.view(x.size(0), -1)``) become pylenet's ops; the result's ``forward()`` replays that graph,
so pylenet traces, trains, saves and loads it like a model written for it. ``nn.Sequential`` and
``nn.ModuleList`` become pylenet's; a module of the user's own class becomes a module of the same
class name holding the same children, parameters and buffers (fx inlines its computation into
the model's forward). A ``torch.nn.Sequential`` of built-in layers becomes a pylenet
``nn.Sequential``.

forward() is traced twice, in training and in evaluation mode, and the model replays the
graph of its current mode: ``F.dropout(x, p, training=self.training)`` and ``if self.training:``
behave as in PyTorch.

Anything pylenet does not have is reported at once, each op by name and source line::

    ValueError: from_torch: 2 unsupported operations in Net: torch.nn.GELU at model.py:12 (self.act);
    torch.matmul at model.py:15. pylenet has ...

torch stays optional: only this function imports it.
"""
import inspect
import numbers
import operator
import os
import re
import traceback
import types
from collections import OrderedDict

from . import functional as F
from .graph import TraceError
from .nn import layers as L
from .nn.init import seeded
from .nn.module import Module, Parameter

__all__ = ["from_torch"]

_EXAMPLE_BATCH = 2  # torch runs forward() once on this batch, for the shapes the checks need
_HERE = os.path.abspath(__file__)
_FRAME = re.compile(r'File "(.*)", line (\d+), in (.*)')
_SUPPORTED = ("pylenet has the layers Conv2d, Linear, MaxPool2d, AvgPool2d, ReLU, Tanh, Sigmoid, LeakyReLU, "
              "Flatten, Dropout, BatchNorm1d/2d, LogSoftmax, Softmax and Identity, their torch.nn.functional forms "
              "(and F.linear / F.conv2d on the model's parameters), + between tensors of one shape (residual), "
              "torch.cat along the channels, and view / reshape / flatten")


def from_torch(module, input_shape):
    """A pylenet module computing what ``module`` (a ``torch.nn.Module``) computes, for inputs of
    per-sample shape ``input_shape`` (e.g. ``(1, 28, 28)``), with its structure, names, weights,
    frozen parameters and train/eval modes; ``state_dict()`` loads back into ``module``.

    Raises ``ValueError`` listing every operation pylenet has no equivalent for, each by name and
    source line (also as the list ``error.unsupported``); ``TraceError`` when ``torch.fx`` cannot
    read forward() (control flow on tensor values) or pylenet cannot trace the result;
    ``ImportError`` without PyTorch. Dropout2d and the like (whole channels) are not pylenet's
    element-wise dropout, so they are refused too."""
    try:
        import torch
        import torch.fx
    except ImportError as e:
        raise ImportError(f"from_torch needs PyTorch, which could not be imported ({e}): install it with "
                          "`pip install torch`") from e
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: module must be a torch.nn.Module, got {type(module).__name__}")
    shape = L.input_shape_of(input_shape, "from_torch")
    if shape is None:
        raise ValueError("from_torch: input_shape is required: the per-sample shape, e.g. (1, 28, 28)")
    return _Converter(torch, module, shape).run()


# ------------------------------------------------------------------------------ the imported modules
class _Imported(Module):
    """A module of the user's own torch class: the same class name, children, parameters and
    buffers. Its computation lives in the imported model's forward(), where torch.fx inlined it."""

    def __init__(self, params=(), buffers=(), children=()):
        super().__init__()
        for name, p in params:
            self.register_parameter(name, p)
        for name, b, persistent in buffers:
            self.register_buffer(name, b, persistent)
        for name, m in children:
            self.add_module(name, m)

    def forward(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} was imported from PyTorch as part of a model, whose forward() "
                        "computes it (torch.fx inlines submodules): call the whole model")

    def __reduce_ex__(self, protocol):
        # The class is made per torch class name (so that repr, errors and checkpoints name it);
        # a pickle or a copy makes it again by name.
        return _restore, (type(self).__name__, type(self).__mro__[1].__name__, self.__getstate__())


class _ImportedModel(_Imported):
    """The imported model: forward() replays the torch.fx graph of its mode with pylenet's ops."""

    def __init__(self, params, buffers, children, programs, input_shape):
        super().__init__(params, buffers, children)
        self._programs = programs  # {training: steps}; see _Converter.program
        self.input_shape = input_shape

    def forward(self, x):
        env = {}
        for kind, out, target, args, kwargs, where in self._programs[self.training]:
            if kind == "input":
                env[out] = x
            elif kind == "attr":
                env[out] = self._lookup(target)
            elif kind == "output":
                return _resolve(target, env)
            else:
                fn = self._lookup(target) if kind == "module" else target
                env[out] = _caller(where)(fn, _resolve(args, env), _resolve(kwargs, env))
        raise RuntimeError("the imported graph has no output")  # never: fx graphs end with one

    def _lookup(self, dotted):
        obj = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


_CLASSES = {}
_BASES = {"_Imported": _Imported, "_ImportedModel": _ImportedModel}


def _class_named(name, base):
    """The pylenet class standing for torch class `name` (one per name and base)."""
    key = (name, base.__name__)
    if key not in _CLASSES:
        _CLASSES[key] = type(name, (base,), {"__module__": __name__, "__doc__": base.__doc__})
    return _CLASSES[key]


def _restore(name, base, state):
    cls = _class_named(name, _BASES[base])
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


class _Ref:
    """A value of the replayed graph: the result of fx node `name`."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return _Ref, (self.name,)

    def __repr__(self):
        return f"%{self.name}"


def _resolve(a, env):
    if isinstance(a, _Ref):
        return env[a.name]
    if isinstance(a, (tuple, list)):
        return type(a)(_resolve(i, env) for i in a)
    if isinstance(a, dict):
        return {k: _resolve(v, env) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_resolve(a.start, env), _resolve(a.stop, env), _resolve(a.step, env))
    return a


def _call(fn, args, kwargs): return fn(*args, **kwargs)  # noqa: E704 - on one line: see _caller


_CALLERS = {}


def _caller(where):
    """_call, as if it were the torch model's source line `where` (file, line, function): pylenet's
    trace names the innermost frame outside the framework in its errors and summary, which is
    then the user's line (``Net.fc1 (model.py:14): Linear expects ...``), not this file's."""
    if where is None:
        return _call
    fn = _CALLERS.get(where)
    if fn is None:
        filename, line, func = where
        name = func if func.isidentifier() else "forward"
        names = {"co_name": name, **({"co_qualname": name} if hasattr(_call.__code__, "co_qualname") else {})}
        code = _call.__code__.replace(co_filename=filename, co_firstlineno=line, **names)
        fn = _CALLERS[where] = types.FunctionType(code, globals(), name)
    return fn


# Helpers the replayed graph calls (module-level, so that the model pickles).
def _size(x, dim=None):
    return x.size() if dim is None else x.size(dim)


def _dim(x):
    return x.dim()


def _numel(x):
    return x.numel()


def _same(x):
    return x


# ------------------------------------------------------------------------------ conversion
class _Unsupported(Exception):
    """An op, or an argument of one, that pylenet has no equivalent for: the message says what."""


def _refuse(**given):
    """_Unsupported for any argument that is not the one value pylenet has (name=(value, default))."""
    for name, (v, default) in given.items():
        same = v == default or (isinstance(v, (tuple, list)) and len(v) > 0 and all(i == default for i in v))
        if not same:
            raise _Unsupported(f"{name}={v!r}, pylenet has {name}={default!r} only")


def _norm_dim(dim, ndim, what):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -max(ndim, 1) <= dim < max(ndim, 1):
        raise _Unsupported(f"{what}={dim!r} for a {ndim}-D tensor")
    return int(dim) % max(ndim, 1)


class _Site:
    """One fx node being converted, with the example values torch computed for the graph."""

    def __init__(self, conv, node):
        self.conv, self.node, self.torch = conv, node, conv.torch

    def value(self, a):
        from torch.fx import Node
        if isinstance(a, Node):
            return self.conv.env[a]
        if isinstance(a, (tuple, list)):
            return [self.value(i) for i in a] if isinstance(a, list) else tuple(self.value(i) for i in a)
        if isinstance(a, dict):
            return {k: self.value(v) for k, v in a.items()}
        return a

    def is_tensor(self, a):
        return isinstance(self.value(a), self.torch.Tensor)

    def tensor(self, a, what="input"):
        """`a` if it is a tensor the model computes from its input (not a constant or a parameter)."""
        from torch.fx import Node
        if not (isinstance(a, Node) and self.is_tensor(a) and a.op != "get_attr"):
            got = "a parameter" if isinstance(a, Node) and a.op == "get_attr" else type(self.value(a)).__name__
            raise _Unsupported(f"{what} is {got}, pylenet's ops take tensors computed from the model's input")
        return a

    def ndim(self, a):
        return self.value(a).dim()

    def shape(self, a):
        return tuple(self.value(a).shape)

    def param(self, a, what):
        from torch.fx import Node
        if a is None:
            return None
        if not (isinstance(a, Node) and a.op == "get_attr"):
            raise _Unsupported(f"{what} must be a parameter of the model")
        return a

    def refuse(self, **given):
        _refuse(**{k: (self.value(v), d) for k, (v, d) in given.items()})

    def in_place(self, a, inplace=True):
        """In place, an op changes its input for the ops that read it later too; the replayed
        graph computes values anew, so an input read after it is refused."""
        from torch.fx import Node
        if not self.value(inplace) or not isinstance(a, Node):
            return
        order = self.conv.order
        if any(order[u] > order[self.node] for u in a.users if u is not self.node):
            raise _Unsupported("in place, and its input is used again afterwards: pylenet computes a new value")


def _origin_of(frames, torch_dir):
    """(file, line, function, code) of the innermost frame outside torch and this file."""
    best = None
    for filename, line, func, code in frames:
        path = os.path.abspath(filename)
        if path == _HERE or path.startswith(torch_dir + os.sep):
            continue
        best = (filename, int(line), func, code)
    return best


def _where(origin):
    return f"{os.path.basename(origin[0])}:{origin[1]}"


def _torch_name(torch, obj):
    """torch.nn.GELU, torch.nn.functional.gelu, torch.matmul, Tensor.permute, operator.mul (*), ..."""
    import torch.nn.functional as TF
    if isinstance(obj, type):
        return f"torch.nn.{obj.__name__}" if getattr(torch.nn, obj.__name__, None) is obj else \
            f"{obj.__module__}.{obj.__qualname__}"
    name = getattr(obj, "__name__", None) or repr(obj)
    for prefix, namespace in (("torch.nn.functional", TF), ("torch", torch)):
        if getattr(namespace, name, None) is obj:
            return f"{prefix}.{name}"
    if getattr(operator, name, None) is obj:
        return f"operator.{name}" + (f" ({_SYMBOLS[name]})" if name in _SYMBOLS else "")
    from torch.fx.node import _get_qualified_name
    try:
        return _get_qualified_name(obj)
    except Exception:  # noqa: BLE001 - any callable fx recorded
        return name


_SYMBOLS = {"add": "+", "iadd": "+=", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
            "pow": "**", "matmul": "@", "neg": "unary -", "getitem": "[]"}


class _Converter:
    def __init__(self, torch, module, shape):
        self.torch, self.root, self.shape = torch, module, shape
        self.name = type(module).__name__
        self.torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
        self.problems = []         # "what at where (details)", in the order found
        self.leaf_problems = {}    # torch module path -> (what, details) of layers pylenet lacks
        self.called = set()        # paths of the layers forward() calls
        self.env = self.order = None

    # ---- reading forward() ------------------------------------------------------------------
    def run(self):
        torch = self.torch
        if isinstance(self.root, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            raise TypeError(f"from_torch: a {self.name} has no forward(); pass the module that calls its layers")
        concrete = self._concrete_args()
        tracer = torch.fx.Tracer()
        tracer.record_stack_traces = True  # each node's source line, for the messages
        self.is_leaf = tracer.is_leaf_module
        self.tree = self._mirror(self.root, "", {})
        if isinstance(self.tree, _Imported) or isinstance(self.tree, (L.Sequential, L.ModuleList)):
            graphs = self._trace(tracer, concrete)
            programs = {mode: self.program(gm) for mode, gm in graphs.items()}
        else:  # one layer: it is the model (fx would trace the layer's own forward, its checks included)
            programs = None
            self.called.add("")
        for path, (what, detail) in self.leaf_problems.items():
            if path not in self.called:
                self._problem(what, None, f"self.{path}, not called in forward()" + (f": {detail}" if detail else ""))
            elif not path:
                self._problem(what, None, detail)
        first = {}
        for name, p in self.root.named_parameters(remove_duplicate=False):
            if id(p) in first:  # pylenet would train two copies
                self._problem("a shared parameter", None, f"self.{first[id(p)]} is also self.{name}")
            first.setdefault(id(p), name)
        if self.problems:
            n = len(self.problems)
            err = ValueError(f"from_torch: {n} unsupported operation{'s' if n > 1 else ''} in {self.name}: "
                             + "; ".join(self.problems) + f". {_SUPPORTED}")
            err.unsupported = list(self.problems)
            raise err
        model = self._build(programs)
        self._load_state(model)
        self._validate(model)
        return model

    def _concrete_args(self):
        """pylenet models take one input: forward's further arguments are fixed to their defaults."""
        try:
            sig = inspect.signature(self.root.forward)
        except (TypeError, ValueError):
            return None
        params = list(sig.parameters.values())
        bad = [p.name for p in params[1:] if p.default is inspect.Parameter.empty
               or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not params or bad:
            raise ValueError(f"from_torch: {self.name}.forward{sig} " + (f"needs {', '.join(bad)} besides its input"
                                                                         if params else "takes no input")
                             + "; a pylenet model takes one input tensor (further arguments take their defaults)")
        return {p.name: p.default for p in params[1:]} or None

    def _trace(self, tracer, concrete):
        torch = self.torch
        flags = [(m, m.training) for m in self.root.modules()]
        graphs = {}
        try:
            for mode in (True, False):
                self.root.train(mode)
                try:
                    graph = tracer.trace(self.root, concrete_args=concrete)
                except Exception as e:  # noqa: BLE001 - fx raises TraceError, RuntimeError, TypeError, ...
                    origin = _origin_of([(f.filename, f.lineno, f.name, f.line)
                                         for f in traceback.extract_tb(e.__traceback__)], self.torch_dir)
                    line = "" if origin is None else f" ({_where(origin)}" + (f": {origin[3].strip()}" if origin[3]
                                                                              else "") + ")"
                    raise TraceError(
                        f"from_torch: torch.fx cannot trace {self.name}.forward(){line}: {type(e).__name__}: {e}. "
                        "fx runs forward() on symbolic placeholders, so control flow on tensor values or shapes (if "
                        "or while on them, loops over a tensor) cannot be recorded: make forward() straight-line "
                        "code (branches on self.training or on constants are fine)") from e
                self._drop_asserts(graph)
                graphs[mode] = torch.fx.GraphModule(self.root, graph, class_name=self.name)
        finally:
            for m, flag in flags:
                m.training = flag
        return graphs

    def _drop_asserts(self, graph):
        """The checks fx adds for forward's fixed arguments (and what only they use)."""
        torch = self.torch
        from torch.fx._symbolic_trace import _assert_is_none
        dead = [n for n in graph.nodes if n.op == "call_function" and n.target in (torch._assert, _assert_is_none)]
        while dead:
            n = dead.pop()
            inputs = [a for a in n.all_input_nodes if a.op not in ("placeholder", "get_attr")]
            graph.erase_node(n)
            dead += [a for a in inputs if not a.users]

    def _examples(self, gm):
        """Every node's value when torch runs the graph once (in eval mode, state put back)."""
        torch = self.torch
        p = next(iter(self.root.parameters()), None)
        x = torch.zeros((_EXAMPLE_BATCH, *self.shape), dtype=p.dtype if p is not None and p.is_floating_point()
                        else torch.float32, device=p.device if p is not None else "cpu")
        flags = [(m, m.training) for m in self.root.modules()]
        saved = [(b, b.clone()) for b in self.root.buffers()]
        interpreter = torch.fx.Interpreter(gm, garbage_collect_values=False)
        try:
            self.root.eval()
            with torch.no_grad():
                interpreter.run(x)
        except Exception as e:  # noqa: BLE001 - whatever the model raises in torch
            raise ValueError(f"from_torch: {self.name} fails in torch itself on an input of shape {tuple(x.shape)} "
                             f"(is input_shape={self.shape} right?): {type(e).__name__}: {e}") from e
        finally:
            for m, flag in flags:
                m.training = flag
            with torch.no_grad():
                for b, copy in saved:
                    b.copy_(copy)
        return interpreter.env

    # ---- the graph -----------------------------------------------------------------------------
    def program(self, gm):
        """The steps forward() replays: (kind, out, target, args, kwargs, where) with kind "input",
        "attr" (a parameter or buffer by path), "module" (a layer by path), "call" (a function)
        or "output"; arguments hold _Refs to earlier results."""
        self.env = self._examples(gm)
        nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(nodes)}
        params = dict(self.root.named_parameters(remove_duplicate=False))
        buffers = dict(self.root.named_buffers(remove_duplicate=False))
        steps, inputs = [], 0
        for n in nodes:
            origin = _origin_of(self._frames(n), self.torch_dir)
            where = origin[:3] if origin else None
            if n.op == "placeholder":
                if inputs == 0:
                    steps.append(("input", n.name, None, (), {}, None))
                inputs += 1  # the others are fixed arguments (_concrete_args), read by nothing now
            elif n.op == "get_attr":
                if n.target in params or n.target in buffers:
                    steps.append(("attr", n.name, n.target, (), {}, where))
                else:
                    self._problem("a tensor constant", origin, f"self.{n.target}: not a parameter or buffer")
            elif n.op == "call_module":
                if self._check_module(n, origin):
                    steps.append(("module", n.name, n.target, _refs(n.args), _refs(n.kwargs), where))
            elif n.op in ("call_function", "call_method"):
                converted = self._convert_call(n, origin)
                if converted is not None:
                    fn, args, kwargs = converted
                    steps.append(("call", n.name, fn, _refs(args), _refs(kwargs), where))
            elif n.op == "output":
                out = n.args[0]
                site = _Site(self, n)
                try:
                    site.tensor(out, "the output")
                except _Unsupported:
                    self._problem(f"returning {type(site.value(out)).__name__}", None,
                                  "a pylenet model returns one tensor")
                steps.append(("output", None, _refs(out), (), {}, None))
        return tuple(steps)

    def _frames(self, node):
        frames, lines = [], (node.stack_trace or "").splitlines()
        for i, line in enumerate(lines):
            m = _FRAME.search(line)
            if m:
                code = lines[i + 1] if i + 1 < len(lines) and not _FRAME.search(lines[i + 1]) else ""
                frames.append((m.group(1), m.group(2), m.group(3).strip(), code))
        return frames

    def _problem(self, what, origin, detail=""):
        text = what + (f" at {_where(origin)}" if origin else "") + (f" ({detail})" if detail else "")
        if text not in self.problems:  # the training and eval graphs share most ops
            self.problems.append(text)

    def _check_module(self, n, origin):
        path = n.target
        self.called.add(path)
        tm = self.root.get_submodule(path)
        if path in self.leaf_problems:
            what, detail = self.leaf_problems[path]
            self._problem(what, origin, f"self.{path}" + (f": {detail}" if detail else ""))
            return False
        site = _Site(self, n)
        try:
            if len(n.args) != 1 or n.kwargs:
                raise _Unsupported(f"called with {len(n.args)} arguments{' and keywords' if n.kwargs else ''}; "
                                   "pylenet's layers take one tensor")
            x = site.tensor(n.args[0])
            check = _MODULE_CHECKS.get(type(tm).__name__)
            if check is not None:
                check(site, tm, x)
        except _Unsupported as e:
            self._problem(_torch_name(self.torch, type(tm)), origin, f"self.{path}: {e}")
            return False
        return True

    def _convert_call(self, n, origin):
        torch = self.torch
        if n.op == "call_method":
            handler, name = _METHODS.get(n.target), f"Tensor.{n.target}"
        else:
            handler, name = _functions(torch).get(n.target), _torch_name(torch, n.target)
        if handler is None:
            self._problem(name, origin)
            return None
        site = _Site(self, n)
        try:
            try:
                inspect.signature(handler).bind(site, *n.args, **n.kwargs)
            except TypeError as e:
                raise _Unsupported(f"arguments not understood: {e}") from None
            return handler(site, *n.args, **n.kwargs)
        except _Unsupported as e:
            self._problem(name, origin, str(e))
            return None

    # ---- the module tree -------------------------------------------------------------------------
    def _mirror(self, tm, path, made):
        """The pylenet module standing for torch module `tm` (at `path`), its children mirrored;
        layers pylenet lacks are noted in leaf_problems (and stood in for by an Identity)."""
        torch = self.torch
        if id(tm) in made:  # one module under two names stays one module
            return made[id(tm)]
        cls = type(tm)
        if cls not in (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict) and self.is_leaf(tm, path):
            made[id(tm)] = self._layer(tm, path)  # what fx calls as a whole (torch.nn's layers)
            return made[id(tm)]
        children = [(name, self._mirror(c, f"{path}.{name}" if path else name, made))
                    for name, c in tm._modules.items() if c is not None]
        if cls is torch.nn.Sequential:
            pm = L.Sequential(OrderedDict(children))
        elif cls is torch.nn.ModuleList and [n for n, _ in children] == [str(i) for i in range(len(children))]:
            pm = L.ModuleList([m for _, m in children])
        else:  # the user's own class (generators: no list keeps the parameters from the flat buffer)
            params = ((k, None if p is None else Parameter(_array(p))) for k, p in tm._parameters.items())
            buffers = ((k, None if b is None else _array(b), k not in tm._non_persistent_buffers_set)
                       for k, b in tm._buffers.items())
            if tm is self.root:
                pm = _class_named(cls.__name__, _ImportedModel)(params, buffers, children, None, self.shape)
            else:
                pm = _class_named(cls.__name__, _Imported)(params, buffers, children)
        made[id(tm)] = pm
        return pm

    def _layer(self, tm, path):
        build = _LAYERS.get(type(tm).__name__)
        what = _torch_name(self.torch, type(tm))
        if build is None or getattr(self.torch.nn, type(tm).__name__, None) is not type(tm):
            self.leaf_problems[path] = (what, "")
            return L.Identity()
        try:
            with seeded(0):  # initial values are overwritten by torch's
                return build(tm)
        except (_Unsupported, ValueError, TypeError) as e:
            self.leaf_problems[path] = (what, str(e))
            return L.Identity()

    def _build(self, programs):
        tree = self.tree
        if isinstance(tree, _ImportedModel):
            tree.__dict__["_programs"] = programs
        elif isinstance(tree, L.Sequential) and not any(isinstance(m, _Imported) for m in tree.modules()):
            # All built-in: pylenet's own Sequential, which saves and loads as itself.
            tree = L.Sequential(OrderedDict(tree._modules), input_shape=self.shape)
        elif programs is None:
            tree.input_shape = self.shape
        else:  # a container at the root whose children are not all built in: replay the graph
            tree = _class_named(self.name, _ImportedModel)((), (), list(tree._modules.items()), programs, self.shape)
        # The outermost __init__ (the root's, built last) has put every parameter into one flat buffer.
        return tree

    def _load_state(self, model):
        torch = self.torch
        state = {k: _array(v) for k, v in self.root.state_dict().items() if isinstance(v, torch.Tensor)}
        try:
            model.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"from_torch: {self.name}'s state_dict does not load into the imported model: "
                             f"{e}") from None
        grads = dict(self.root.named_parameters())
        for name, p in model.named_parameters():
            p.requires_grad = bool(grads[name].requires_grad) if name in grads else True
        modules = dict(model.named_modules())
        for path, tm in self.root.named_modules():
            if path in modules:
                modules[path].__dict__["training"] = bool(tm.training)

    def _validate(self, model):
        """A pylenet trace in both modes now, so that what pylenet refuses shows at import."""
        from . import runtime
        for mode in (True, False):
            with runtime._EvalMode(model, training=mode):
                try:
                    runtime.traced(model, self.shape, _EXAMPLE_BATCH + 1)
                except TraceError as e:
                    raise TraceError(f"from_torch: the imported {self.name} does not trace in pylenet "
                                     f"({'training' if mode else 'eval'} mode): {e}") from None


def _refs(a):
    from torch.fx import Node
    if isinstance(a, Node):
        return _Ref(a.name)
    if isinstance(a, (tuple, list)):
        return tuple(_refs(i) for i in a) if isinstance(a, tuple) else [_refs(i) for i in a]
    if isinstance(a, dict):
        return {k: _refs(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_refs(a.start), _refs(a.stop), _refs(a.step))
    return a


def _array(t):
    """A torch tensor as a new NumPy array: float32 (pylenet's), or int64."""
    import torch
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.float().numpy().copy()
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"from_torch: a tensor of dtype {t.dtype} has no pylenet equivalent")
    return t.long().numpy().copy()


# ------------------------------------------------------------------------------ layers
def _pool_args(m):
    return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}


def _same_padding(kernel, stride):
    """Conv padding "same" (stride 1) as pylenet's symmetric padding: odd kernels only."""
    _refuse(stride=(stride, 1))
    if any(k % 2 == 0 for k in kernel):
        raise _Unsupported(f"padding='same' with the even kernel {tuple(kernel)} pads unevenly, pylenet pads "
                           "both sides alike")
    return tuple((k - 1) // 2 for k in kernel)


def _conv_layer(m):
    _refuse(dilation=(m.dilation, 1), groups=(m.groups, 1), padding_mode=(m.padding_mode, "zeros"))
    padding = m.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = _same_padding(m.kernel_size, m.stride)
    return L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, bias=m.bias is not None)


def _max_pool_layer(m):
    _refuse(dilation=(m.dilation, 1), return_indices=(m.return_indices, False), ceil_mode=(m.ceil_mode, False))
    return L.MaxPool2d(**_pool_args(m))


def _avg_pool_layer(m):
    _refuse(ceil_mode=(m.ceil_mode, False), count_include_pad=(m.count_include_pad, True),
            divisor_override=(m.divisor_override, None))
    return L.AvgPool2d(**_pool_args(m))


def _batch_norm_layer(m):
    cls = L.BatchNorm1d if type(m).__name__ == "BatchNorm1d" else L.BatchNorm2d
    return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
               track_running_stats=m.track_running_stats)


# torch.nn class name -> the pylenet layer with the same constructor arguments.
_LAYERS = {
    "Conv2d": _conv_layer,
    "Linear": lambda m: L.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    "MaxPool2d": _max_pool_layer,
    "AvgPool2d": _avg_pool_layer,
    "ReLU": lambda m: L.ReLU(m.inplace),
    "Tanh": lambda m: L.Tanh(),
    "Sigmoid": lambda m: L.Sigmoid(),
    "LeakyReLU": lambda m: L.LeakyReLU(m.negative_slope, m.inplace),
    "Flatten": lambda m: L.Flatten(m.start_dim, m.end_dim),
    "Dropout": lambda m: L.Dropout(m.p, m.inplace),
    "BatchNorm1d": _batch_norm_layer,
    "BatchNorm2d": _batch_norm_layer,
    "LogSoftmax": lambda m: L.LogSoftmax(1 if m.dim is None else m.dim),
    "Softmax": lambda m: L.Softmax(1 if m.dim is None else m.dim),
    "Identity": lambda m: L.Identity(),
}


# What a layer's call needs of its input (pylenet's ops are narrower than torch's).
def _rank(site, x, ranks, what):
    if site.ndim(x) not in ranks:
        raise _Unsupported(f"a {site.ndim(x)}-D input, pylenet's {what} takes {' or '.join(f'{r}-D' for r in ranks)}")


def _softmax_dim(site, x, dim):
    ndim = site.ndim(x)
    d = (0 if ndim in (0, 1, 3) else 1) if dim is None else _norm_dim(site.value(dim), ndim, "dim")  # torch's default
    if ndim != 2 or d != 1:
        raise _Unsupported(f"over dim {d} of a {ndim}-D tensor, pylenet's is over dim 1 of (N, C) scores")
    return 1


def _flatten_start(site, x, start_dim, end_dim):
    s = _norm_dim(site.value(start_dim), site.ndim(x), "start_dim")
    _norm_dim(site.value(end_dim), site.ndim(x), "end_dim")
    if s == 0:
        raise _Unsupported("start_dim=0 merges the batch into the features, pylenet flattens from dim 1 "
                           "(torch.flatten(x, 1))")


_MODULE_CHECKS = {
    "Conv2d": lambda s, m, x: _rank(s, x, (4,), "Conv2d"),
    "Linear": lambda s, m, x: _rank(s, x, (2,), "Linear"),
    "MaxPool2d": lambda s, m, x: _rank(s, x, (4,), "MaxPool2d"),
    "AvgPool2d": lambda s, m, x: _rank(s, x, (4,), "AvgPool2d"),
    "BatchNorm1d": lambda s, m, x: _rank(s, x, (2, 3), "BatchNorm1d"),
    "BatchNorm2d": lambda s, m, x: _rank(s, x, (4,), "BatchNorm2d"),
    "Flatten": lambda s, m, x: _flatten_start(s, x, m.start_dim, m.end_dim),
    "LogSoftmax": lambda s, m, x: _softmax_dim(s, x, m.dim),
    "Softmax": lambda s, m, x: _softmax_dim(s, x, m.dim),
    "ReLU": lambda s, m, x: s.in_place(x, m.inplace),
    "LeakyReLU": lambda s, m, x: s.in_place(x, m.inplace),
    "Dropout": lambda s, m, x: s.in_place(x, m.inplace),
}


# ------------------------------------------------------------------------------ functions and methods
# Each takes the site and the call's arguments under torch's names, and returns the pylenet
# function with its arguments (fx nodes among them), or raises _Unsupported.
def _relu(site, input, inplace=False):
    site.in_place(input, inplace)
    return F.relu, (site.tensor(input),), {}


def _relu_(site, input):
    return _relu(site, input, True)


def _unary(fn):
    def convert(site, input):
        return fn, (site.tensor(input),), {}
    return convert


def _unary_(fn):  # x.tanh_() and the like
    def convert(site, input):
        site.in_place(input)
        return fn, (site.tensor(input),), {}
    return convert


def _leaky_relu(site, input, negative_slope=0.01, inplace=False):
    site.in_place(input, inplace)
    return F.leaky_relu, (site.tensor(input), negative_slope), {}


def _max_pool2d(site, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    site.refuse(dilation=(dilation, 1), ceil_mode=(ceil_mode, False), return_indices=(return_indices, False))
    _rank(site, site.tensor(input), (4,), "max_pool2d")
    return F.max_pool2d, (input, kernel_size, None if site.value(stride) in (None, [], ()) else stride, padding), {}


def _avg_pool2d(site, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    site.refuse(ceil_mode=(ceil_mode, False), count_include_pad=(count_include_pad, True),
                divisor_override=(divisor_override, None))
    _rank(site, site.tensor(input), (4,), "avg_pool2d")
    return F.avg_pool2d, (input, kernel_size, None if site.value(stride) in (None, [], ()) else stride, padding), {}


def _flatten(site, input, start_dim=0, end_dim=-1):
    _flatten_start(site, site.tensor(input), start_dim, end_dim)
    return F.flatten, (input, start_dim, end_dim), {}


def _view(site, input, *shape):
    if any(isinstance(site.value(s), site.torch.dtype) for s in shape):
        raise _Unsupported("a view as another dtype")
    return F.reshape, (site.tensor(input), *shape), {}


def _reshape(site, input, shape):
    return F.reshape, (site.tensor(input), shape), {}


def _add(site, input, other, alpha=1):
    site.refuse(alpha=(alpha, 1))
    if not site.is_tensor(input) and not site.is_tensor(other):  # shape arithmetic: x.size(1) + 2
        return operator.add, (input, other), {}
    a, b = site.tensor(input, "an operand"), site.tensor(other, "an operand")
    if site.shape(a) != site.shape(b):
        raise _Unsupported(f"of shapes {site.shape(a)[1:]} and {site.shape(b)[1:]} per sample, pylenet adds tensors "
                           "of one shape (no broadcasting)")
    return F.add, (a, b), {}


def _add_(site, input, other, alpha=1):
    site.in_place(input)
    return _add(site, input, other, alpha)


def _arithmetic(op):
    """An operator on shapes and numbers (x.size(1) * 2): pylenet has none on tensors but +."""
    def convert(site, *args):
        if any(site.is_tensor(a) for a in args):
            raise _Unsupported("on tensors: pylenet's only op between tensors is + (residual add)")
        return op, args, {}
    return convert


def _getitem(site, obj, index):
    if site.is_tensor(obj):
        raise _Unsupported("indexing or slicing a tensor: pylenet's graph has no such op")
    return operator.getitem, (obj, index), {}


def _getattr(site, obj, name, *default):
    if site.is_tensor(obj) and name not in ("shape", "ndim"):
        raise _Unsupported(f"the tensor attribute .{name}, pylenet's tensors have .shape and .ndim")
    return getattr, (obj, name, *default), {}


def _cat(site, tensors, dim=0):
    items = [site.tensor(t, "an operand") for t in tensors]
    if _norm_dim(site.value(dim), site.ndim(items[0]), "dim") != 1:
        raise _Unsupported(f"dim={site.value(dim)}, pylenet joins along the channels (dim 1) only")
    return F.cat, (list(items), 1), {}


def _dropout(site, input, p=0.5, training=True, inplace=False):
    site.in_place(input, inplace)
    return F.dropout, (site.tensor(input), p, training), {}


def _torch_dropout(site, input, p, train):
    return F.dropout, (site.tensor(input), p, train), {}


def _softmax(fn):
    def convert(site, input, dim=None, _stacklevel=3, dtype=None):
        site.refuse(dtype=(dtype, None))
        return fn, (site.tensor(input), _softmax_dim(site, input, dim)), {}
    return convert


def _linear(site, input, weight, bias=None):
    _rank(site, site.tensor(input), (2,), "linear")
    return F.linear, (input, site.param(weight, "weight"), site.param(bias, "bias")), {}


def _conv2d(site, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    site.refuse(dilation=(dilation, 1), groups=(groups, 1))
    _rank(site, site.tensor(input), (4,), "conv2d")
    w = site.param(weight, "weight")
    if site.value(padding) == "same":
        padding = _same_padding(site.shape(w)[2:], site.value(stride))
    elif site.value(padding) == "valid":
        padding = 0
    return F.conv2d, (input, w, site.param(bias, "bias"), stride, padding), {}


def _size_method(site, input, dim=None):
    return _size, (input, dim), {}


def _no_args(fn):
    def convert(site, input, *args, **kwargs):
        return fn, (input,), {}
    return convert


_METHODS = {
    "size": _size_method, "dim": _no_args(_dim), "numel": _no_args(_numel), "contiguous": _no_args(_same),
    "view": _view, "reshape": _view, "flatten": _flatten,
    "relu": _unary(F.relu), "relu_": _unary_(F.relu), "tanh": _unary(F.tanh), "tanh_": _unary_(F.tanh),
    "sigmoid": _unary(F.sigmoid), "sigmoid_": _unary_(F.sigmoid),
    "softmax": _softmax(F.softmax), "log_softmax": _softmax(F.log_softmax),
    "add": _add, "add_": _add_,
}

_FUNCTIONS = {}


def _functions(torch):
    """torch function -> converter (made at the first import: torch is optional)."""
    if not _FUNCTIONS:
        import torch.nn.functional as TF
        table = {
            TF.relu: _relu, torch.relu: _relu, TF.relu_: _relu_, torch.relu_: _relu_,
            torch.tanh: _unary(F.tanh), TF.tanh: _unary(F.tanh), torch.sigmoid: _unary(F.sigmoid),
            TF.sigmoid: _unary(F.sigmoid), TF.leaky_relu: _leaky_relu,
            TF.max_pool2d: _max_pool2d, torch.max_pool2d: _max_pool2d, TF.avg_pool2d: _avg_pool2d,
            torch.flatten: _flatten, torch.reshape: _reshape,
            operator.add: _add, operator.iadd: _add, torch.add: _add, torch.cat: _cat, torch.concat: _cat,
            TF.dropout: _dropout, torch.dropout: _torch_dropout,
            TF.softmax: _softmax(F.softmax), TF.log_softmax: _softmax(F.log_softmax),
            torch.softmax: _softmax(F.softmax), torch.log_softmax: _softmax(F.log_softmax),
            TF.linear: _linear, TF.conv2d: _conv2d,
            operator.getitem: _getitem, getattr: _getattr,
        }
        for op in (operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
                   operator.neg):
            table[op] = _arithmetic(op)
        _FUNCTIONS.update(table)
    return _FUNCTIONS
