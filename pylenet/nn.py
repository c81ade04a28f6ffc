"""Layers and Sequential models, PyTorch-style.

A ``Sequential`` is a description plus NumPy parameters. To run, it compiles into a native
``_C.Network`` (``csrc/net/network.cpp``) that infers the shapes, plans the memory and runs
whole training steps; ``train``, ``evaluate`` and ``predict`` copy the parameters in (and,
after training, back out). Parameter names and layouts are PyTorch's, so
``state_dict()`` moves both ways between a pylenet model and its ``torch.nn.Sequential`` twin.
"""
import json
import math
import os
import tempfile
from collections import OrderedDict

import numpy as np

from . import _C

__all__ = ["Module", "Conv2d", "MaxPool2d", "AvgPool2d", "Linear", "ReLU", "Tanh", "Flatten",
           "Sequential", "load", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


def _pair(v, name, owner):
    items = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(items) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise TypeError(f"{owner}: {name} must be an int or a pair of ints, got {v!r}")
    return int(items[0]), int(items[1])


def _positive(v, name, owner):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")
    return int(v)


class Module:
    """A layer: a config (``config()``) and, for some, parameters (``weight``, ``bias``)."""

    def params(self):
        """(name, array) pairs of this layer's parameters, in storage order."""
        return [(n, getattr(self, n)) for n in ("weight", "bias") if getattr(self, n, None) is not None]

    def config(self):
        raise NotImplementedError

    def spec(self):
        return self.config()

    def reset_parameters(self, rng):
        pass

    def __repr__(self):
        cfg = {k: v for k, v in self.config().items() if k != "kind"}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in cfg.items())})"


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        self.in_channels = _positive(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive(out_channels, "out_channels", "Conv2d")
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _pair(stride, "stride", "Conv2d")
        self.padding = _pair(padding, "padding", "Conv2d")
        self.weight = np.zeros((self.out_channels, self.in_channels, *self.kernel_size), np.float32)
        self.bias = np.zeros(self.out_channels, np.float32) if bias else None

    def config(self):
        return {"kind": "Conv2d", "in": self.in_channels, "out": self.out_channels, "kernel": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "bias": self.bias is not None}

    def reset_parameters(self, rng):
        _kaiming_uniform(self, rng, fan_in=self.in_channels * self.kernel_size[0] * self.kernel_size[1])


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _positive(in_features, "in_features", "Linear")
        self.out_features = _positive(out_features, "out_features", "Linear")
        self.weight = np.zeros((self.out_features, self.in_features), np.float32)
        self.bias = np.zeros(self.out_features, np.float32) if bias else None

    def config(self):
        return {"kind": "Linear", "in": self.in_features, "out": self.out_features, "bias": self.bias is not None}

    def reset_parameters(self, rng):
        _kaiming_uniform(self, rng, fan_in=self.in_features)


def _kaiming_uniform(layer, rng, fan_in):
    # PyTorch's default: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    # and the bias is drawn from the same range.
    bound = 1.0 / math.sqrt(fan_in)
    layer.weight[...] = rng.uniform(-bound, bound, layer.weight.shape)
    if layer.bias is not None:
        layer.bias[...] = rng.uniform(-bound, bound, layer.bias.shape)


class _Pool(Module):
    kind = None

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size", self.kind)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", self.kind)
        self.padding = _pair(padding, "padding", self.kind)

    def config(self):
        return {"kind": self.kind, "kernel": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool):
    kind = "MaxPool2d"


class AvgPool2d(_Pool):
    kind = "AvgPool2d"


class ReLU(Module):
    def config(self):
        return {"kind": "ReLU"}


class Tanh(Module):
    def config(self):
        return {"kind": "Tanh"}


class Flatten(Module):
    def config(self):
        return {"kind": "Flatten"}


LAYERS = {"Conv2d": Conv2d, "Linear": Linear, "MaxPool2d": MaxPool2d, "AvgPool2d": AvgPool2d,
          "ReLU": ReLU, "Tanh": Tanh, "Flatten": Flatten}


def layer_from_config(cfg):
    kind = cfg.get("kind")
    if kind == "Conv2d":
        return Conv2d(cfg["in"], cfg["out"], tuple(cfg["kernel"]), tuple(cfg["stride"]), tuple(cfg["padding"]),
                      cfg["bias"])
    if kind == "Linear":
        return Linear(cfg["in"], cfg["out"], cfg["bias"])
    if kind in ("MaxPool2d", "AvgPool2d"):
        return LAYERS[kind](tuple(cfg["kernel"]), tuple(cfg["stride"]), tuple(cfg["padding"]))
    if kind in LAYERS:
        return LAYERS[kind]()
    raise ValueError(f"unknown layer kind {kind!r}")


class Sequential(Module):
    """Layers applied in order to images of shape ``input_shape`` (C, H, W).

    The stack is checked at construction: an impossible one (channels that do not chain, a
    kernel larger than its input, a Linear whose in_features differ from what reaches it)
    raises ValueError naming the layer.
    """

    def __init__(self, *layers, input_shape=(1, 28, 28), name="model", seed=0, normalization=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, l in enumerate(layers):
            if not isinstance(l, Module) or isinstance(l, Sequential):
                raise TypeError(f"Sequential: layer {i} is {type(l).__name__}, not a pylenet layer")
        self.layers = list(layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.name = name
        # (mean, std) the model's inputs were normalised with; predict() on raw pixels uses it.
        self.normalization = normalization
        self._infer_net, self._infer_key = None, None
        probe = self._compile(batch_size=1)  # shape inference: raises on impossible stacks
        self._shapes = [tuple(l["out_shape"]) for l in probe.layers]
        self.num_classes = probe.num_classes
        self.reset_parameters(seed)

    # ---- parameters -------------------------------------------------------------------
    def reset_parameters(self, seed=0):
        """PyTorch's default initialisation (Kaiming-uniform), from a seeded generator."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.reset_parameters(rng)
        return self

    def named_parameters(self):
        for i, layer in enumerate(self.layers):
            for pname, arr in layer.params():
                yield f"{i}.{pname}", arr

    def num_parameters(self):
        return sum(a.size for _, a in self.named_parameters())

    def state_dict(self):
        """Copies of the parameters under PyTorch's names ("0.weight", "0.bias", ...)."""
        return OrderedDict((k, v.copy()) for k, v in self.named_parameters())

    def load_state_dict(self, state):
        """Loads parameters; checks names, shapes, dtypes and values, and reports every mismatch."""
        state = {k: _to_numpy(v) for k, v in dict(state).items()}
        own = OrderedDict(self.named_parameters())
        problems = [f"missing {k} (expected shape {tuple(v.shape)})" for k, v in own.items() if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        for k, v in own.items():
            if k not in state:
                continue
            got = state[k]
            if got.shape != v.shape:
                problems.append(f"{k}: shape {tuple(got.shape)}, expected {tuple(v.shape)}")
            elif got.dtype != np.float32:
                problems.append(f"{k}: dtype {got.dtype}, expected float32")
            elif not np.isfinite(got).all():
                problems.append(f"{k}: contains NaN or inf")
        if problems:
            raise ValueError(f"load_state_dict ({self.name}): " + "; ".join(problems))
        for k, v in own.items():
            v[...] = state[k]
        return self

    # ---- compilation -------------------------------------------------------------------
    def architecture(self):
        return [layer.config() for layer in self.layers]

    def _compile(self, batch_size, optimizer=None, conv_algo="heuristic", threads=None, device=None):
        """The native network for this model: on the CPU, or on CUDA device ``device`` (an int)."""
        from . import get_num_threads
        spec = optimizer.spec() if optimizer is not None else {"kind": "sgd", "lr": 0.0}
        try:
            if device is not None:
                return _C.cuda.Network(self.architecture(), list(self.input_shape), int(batch_size), spec,
                                       conv_algo, int(device))
            return _C.Network(self.architecture(), list(self.input_shape), int(batch_size), spec, conv_algo,
                              int(threads or get_num_threads()))
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None

    def _load_into(self, net):
        if not hasattr(net, "set_params"):  # CPU: write into the network's own buffer
            flat = net.params()
            for name, arr in self.named_parameters():
                off = self._offsets()[name]
                flat[off:off + arr.size] = arr.ravel()
            return
        arrays = [arr.ravel() for _, arr in self.named_parameters()]  # device: one copy
        net.set_params(np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32))

    def _store_from(self, net):
        flat = net.params()  # a view on the CPU, a host copy from a device
        for name, arr in self.named_parameters():
            off = self._offsets()[name]
            arr[...] = flat[off:off + arr.size].reshape(arr.shape)

    def _offsets(self):
        # Parameters are laid out layer by layer, weight then bias, as the network plans them.
        offsets, off = {}, 0
        for name, arr in self.named_parameters():
            offsets[name] = off
            off += arr.size
        return offsets

    # ---- inference ---------------------------------------------------------------------
    def _images(self, images, op):
        x = np.asarray(images)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{op}: images must hold real numbers, got dtype {x.dtype}")
        c, h, w = self.input_shape if len(self.input_shape) == 3 else (None, None, None)
        if c == 1 and x.ndim == 3 and x.shape[1:] == (h, w):  # grey images without the C axis
            x = x[:, None]                                     # (also one (1, H, W) image)
        elif c == 1 and x.ndim == 2 and x.shape == (h, w):    # one grey image
            x = x[None, None]
        elif x.ndim == len(self.input_shape):                 # one image (C, H, W)
            x = x[None]
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{op}: expected images of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"or one image {self.input_shape}, got {tuple(np.shape(images))}")
        if x.shape[0] == 0:
            raise ValueError(f"{op}: no images given")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _inference_net(self, batch_size=256, device=None):
        from . import get_num_threads
        net, key = self._infer_net, (batch_size, device, get_num_threads() if device is None else None)
        if net is None or self._infer_key != key:
            self._infer_net = None  # free the old one (device memory) before planning the new one
            net = self._infer_net = self._compile(batch_size, device=device)
            self._infer_key = key
        self._load_into(net)
        return net

    def predict(self, images, return_probs=False, batch_size=256, device="cpu"):
        """Class ids (N,) for a batch or a single image; with return_probs, also (N, classes) softmax.

        ``device``: "cpu" or "cuda[:N]" (the images are uploaded once, then run in batches)."""
        from .training import device_index
        dev = device_index(device, "predict")
        x = self._images(images, "predict")
        net = self._inference_net(min(batch_size, len(x)), dev)
        probs = net.predict(x) if dev is None else net.predict(net.upload(x, None, "predict"))
        ids = probs.argmax(axis=1)
        return (ids, probs) if return_probs else ids

    # ---- summary ------------------------------------------------------------------------
    def summary(self, batch_size=64, optimizer="sgd", print_fn=print):
        """Per-layer output shape, parameters, FLOPs and activation bytes, and the memory plan
        the runtime allocates for training at this batch size (returned as a dict, and printed)."""
        from .optim import make_optimizer
        opt = make_optimizer(optimizer)
        if isinstance(optimizer, str) and optimizer == "sgd":
            opt = make_optimizer("sgd", momentum=0.9)
        net = self._compile(batch_size, opt)
        rows = []
        for i, (layer, info) in enumerate(zip(self.layers, net.layers)):
            rows.append({"index": i, "layer": repr(layer), "out_shape": (batch_size, *info["out_shape"]),
                         "params": info["weight_count"] + info["bias_count"],
                         "flops": info["flops"] * batch_size,
                         "activation_bytes": 4 * info["activation_floats"] * batch_size})
        plan = net.memory_plan()
        result = {"model": self.name, "input_shape": (batch_size, *self.input_shape), "layers": rows,
                  "total_params": self.num_parameters(),
                  "forward_flops_per_sample": sum(l["flops"] for l in net.layers),
                  "training_flops_per_sample": 3 * sum(l["flops"] for l in net.layers),
                  "memory_plan": plan, "optimizer": repr(opt), "conv_algorithms": net.conv_algorithms}
        if print_fn:
            print_fn(format_summary(result))
        return result

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, path, optimizer=None, extra=None):
        """Writes an .npz checkpoint (no pickle): architecture, parameters and, if given, the
        optimizer's config and state for resuming. Written to a temporary file, then renamed."""
        meta = {"format": CHECKPOINT_FORMAT, "pylenet_version": _C.build_info()["version"], "name": self.name,
                "input_shape": list(self.input_shape), "architecture": self.architecture(),
                "normalization": list(self.normalization) if self.normalization else None,
                "optimizer": None, "extra": extra or {}}
        arrays = {f"param/{k}": v for k, v in self.named_parameters()}
        if optimizer is not None:
            meta["optimizer"] = optimizer.config()
            if optimizer.state is not None:
                meta["optimizer_steps"] = int(optimizer.state["steps"])
                for i, buf in enumerate(optimizer.state["buffers"]):
                    arrays[f"optim/{i}"] = buf
        arrays["meta"] = np.array(json.dumps(meta))
        _atomic_savez(path, arrays)
        return path

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {l!r}" for i, l in enumerate(self.layers))
        return f"Sequential[{self.name}](\n{inner}\n)"


def _to_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _atomic_savez(path, arrays):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pylenet-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, return_optimizer=False):
    """Rebuilds a model (and optionally its optimizer, with state) from a checkpoint."""
    from .optim import make_optimizer
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # a zip that is not one, truncated, or holding pickles
        raise ValueError(f"load: {path} is not a readable pylenet checkpoint ({type(e).__name__}: {e})") from None
    if "meta" not in files:
        raise ValueError(f"load: {path} is not a pylenet checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(files["meta"]))
    except ValueError as e:
        raise ValueError(f"load: {path} has corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"load: {path} has corrupt metadata (not a JSON object)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"load: {path} has checkpoint format {meta.get('format')!r}; "
                         f"this pylenet reads format {CHECKPOINT_FORMAT}")
    try:  # any malformed field is a corrupt checkpoint, not a crash
        layers = [layer_from_config(c) for c in meta["architecture"]]
        norm = meta.get("normalization")
        model = Sequential(*layers, input_shape=tuple(meta["input_shape"]), name=str(meta.get("name", "model")),
                           normalization=tuple(norm) if norm else None)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"load: {path} holds an invalid architecture ({type(e).__name__}: {e})") from None
    model.load_state_dict({k[len("param/"):]: v for k, v in files.items() if k.startswith("param/")})
    if not return_optimizer:
        return model
    opt = None
    if meta.get("optimizer"):
        try:
            opt = make_optimizer(meta["optimizer"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"load: {path} holds an invalid optimizer config ({type(e).__name__}: {e})") from None
        bufs = [files[f"optim/{i}"] for i in range(2) if f"optim/{i}" in files]
        if bufs:
            n = model.num_parameters()
            if any(b.shape != (n,) or b.dtype != np.float32 for b in bufs):
                raise ValueError(f"load: optimizer state in {path} does not match the model's {n} parameters")
            opt.state = {"buffers": bufs, "steps": int(meta.get("optimizer_steps", 0))}
    return model, opt


def format_summary(s):
    def human(n):
        for unit in ("B", "KiB", "MiB", "GiB"):
            if abs(n) < 1024 or unit == "GiB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024

    lines = [f"{s['model']}: input {s['input_shape']}, optimizer {s['optimizer']}",
             f"{'#':>2}  {'layer':<52} {'output':<18} {'params':>9} {'MFLOPs':>9} {'activations':>12}"]
    for r in s["layers"]:
        lines.append(f"{r['index']:>2}  {r['layer'][:52]:<52} {str(r['out_shape']):<18} {r['params']:>9,} "
                     f"{r['flops'] / 1e6:>9.2f} {human(r['activation_bytes']):>12}")
    p = s["memory_plan"]
    lines.append(f"total parameters {s['total_params']:,}; forward {s['forward_flops_per_sample'] / 1e6:.2f} "
                 f"MFLOP/sample, training ~{s['training_flops_per_sample'] / 1e6:.2f} MFLOP/sample")
    lines.append("memory plan (bytes the runtime allocates for training at this batch size):")
    for k in ("params", "grads", "chunk_grads", "optimizer_state", "activations", "activation_grads", "workspace",
              "total"):
        lines.append(f"  {k:<17} {human(p[k]):>10}  ({p[k]:,} B)")
    if s.get("conv_algorithms"):
        lines.append(f"conv algorithms: {', '.join(s['conv_algorithms'])}")
    return "\n".join(lines)
