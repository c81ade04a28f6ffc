"""Pictures of a model and its training, as PNG files (matplotlib: ``pip install "pylenet[viz]"``).

    from pylenet import viz
    viz.plot_history(history, "curves.png")             # loss and accuracy per epoch, train and eval
    viz.plot_filters(model, "filters.png")               # the first conv layer's filters (layer="conv2": another)
    viz.plot_feature_maps(model, image, "maps.png")     # the image, every conv/pool layer's maps, the class scores
    viz.plot_confusion(model, test_set, "confusion.png")
    viz.plot_worst(model, test_set, "worst.png", n=16)   # the test images with the highest loss

Each function writes its PNG atomically (``pylenet/atomic.py``: the file appears whole or not
at all) and returns the matplotlib ``Figure`` (``path=None`` only builds it, e.g. for a
notebook). Figures are drawn with the Agg renderer on ``Figure`` objects of their own, never
through ``pyplot``: no window opens and the user's chosen backend is left as it is. Importing
``pylenet`` or ``pylenet.viz`` does not import matplotlib; a plot without it raises
``ImportError`` saying what to install.

The numbers drawn come from functions that can be used alone: ``feature_maps`` (every
conv/pool layer's output, computed by replaying the model's traced graph op by op with
``pylenet.functional`` on NumPy arrays, in evaluation mode), ``conv_layers``,
``confusion_matrix`` and ``worst_examples``.

Models are pylenet Modules or checkpoint paths. Images: ``plot_feature_maps`` takes one image,
(H, W) or (C, H, W). With ``normalized=None`` (the default) an image whose values all lie in
[0, 1] is taken as raw pixels and normalised with ``model.normalization`` (when the model has
one, as pylenet's LeNets and every model ``pylenet train`` saves do); any other image is used
as it is, already normalised. Pass ``normalized=True`` or ``False`` to say which it is; uint8
pixels (0..255) are always raw. Datasets (``plot_confusion``, ``plot_worst``: a pylenet
Dataset or an (images, labels) pair) are used as ``pylenet.train`` uses them: float images as
given (pylenet's datasets are normalised), uint8 images scaled to [0, 1] and normalised with
``model.normalization``.

Bad input fails before anything is drawn or written: ``FileNotFoundError`` for a history or
checkpoint file that is not there, ``ValueError`` (naming the argument) for an output path
that is not a .png in an existing folder, a model without conv layers, an unknown layer, an
image of the wrong shape, malformed records; ``TypeError`` for arguments of the wrong kind.
"""
import json
import math
import os
from typing import NamedTuple

import numpy as np

__all__ = ["plot_history", "plot_filters", "plot_feature_maps", "plot_confusion", "plot_worst", "feature_maps",
           "conv_layers", "confusion_matrix", "worst_examples", "FeatureMaps", "Stage", "Worst"]

INSTALL = 'pip install "pylenet[viz]"'


# ------------------------------------------------------------------------------ matplotlib
def _matplotlib(op):
    """(Figure, FigureCanvasAgg), or ImportError saying what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"{op} draws with matplotlib, which could not be imported ({e}): install it with "
                          f"{INSTALL} (or pip install \"matplotlib>=3.5\")") from None
    return Figure, FigureCanvasAgg


def _figure(op, size, layout="constrained"):
    Figure, FigureCanvasAgg = _matplotlib(op)
    fig = Figure(figsize=size, dpi=100, layout=layout, facecolor="white")
    FigureCanvasAgg(fig)  # attaches itself: savefig renders with Agg whatever backend pyplot uses
    return fig


def _check_out(path, op):
    """The output path, refused before any work if it cannot be written."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a file name (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"{op}: path {path!r} must end in .png (pylenet.viz writes PNG files)")
    from .atomic import check_target
    return check_target(path, f"{op}: cannot write")


def _save(fig, path):
    if path is not None:
        from .atomic import write_atomic
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi, facecolor="white"))
    return fig


# ------------------------------------------------------------------------------ models and data
def _as_model(model, op):
    """A Module, or the model of a checkpoint file."""
    from .nn.module import Module
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{op}: no such checkpoint: {path}")
        from .checkpoint import load
        return load(path)
    if not isinstance(model, Module):
        raise TypeError(f"{op}: expected a pylenet Module (or a checkpoint path), got {type(model).__name__}")
    return model


def _model_name(model):
    return str(getattr(model, "name", None) or getattr(model, "_type_name", None) or type(model).__name__)


def _normalization(model):
    return getattr(model, "normalization", None) or None


def _eval_graph(model, input_shape):
    """The model's traced graph in evaluation mode, and {value id: name} of what it reads."""
    from . import runtime
    with runtime._EvalMode(model):
        t = runtime.traced(model, tuple(input_shape), 1)
    return t, {vid: name for name, vid in {**t.params, **t.buffers}.items()}


def _output_op(t):
    """The op that made the graph's output (softmax / log_softmax outputs are probabilities already)."""
    for n in t.graph.nodes():
        if t.output in n["outputs"]:
            return n["op"]
    return None


def _log_probs(out, kind):
    """log-probabilities (float64) from a model's (N, classes) outputs, whatever its last op."""
    z = np.asarray(out, dtype=np.float64)
    if kind == "softmax":
        with np.errstate(divide="ignore"):
            return np.log(z)
    if kind == "log_softmax":
        return z
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _dataset(model, data, op):
    """(images float32 (N, C, H, W), labels int64, class names, (mean, std) to undo for display).
    The data is whatever train() takes (training._arrays reads it, uint8 pixels normalised as
    the model says); the display scale follows from where the pixels came from."""
    from .training import _arrays
    images, labels = _arrays(data, op, model)
    shape = getattr(model, "input_shape", None)
    if shape and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{op}: images of shape {tuple(images.shape[1:])} do not match the model's input "
                         f"{tuple(shape)}")
    norm = _normalization(model)
    if _pixels_are_uint8(data):  # _arrays made them what the model expects
        display = norm or (0.0, 1.0)
    elif hasattr(data, "mean") and hasattr(data, "std"):
        display = (float(data.mean), float(data.std))
    else:
        display = norm
    classes = [str(c) for c in getattr(data, "classes", None) or []]
    return images, labels, classes, display


def _pixels_are_uint8(data):
    if hasattr(data, "images"):
        first = data.images
    elif isinstance(data, (tuple, list)) and len(data) == 2 and getattr(data[0], "ndim", 0) >= 3:
        first = data[0]
    else:
        try:
            first = data[0][0]
        except (TypeError, IndexError, KeyError):
            return False
    return getattr(np.asarray(first), "dtype", None) == np.uint8


def _log_probs_of(model, images, op):
    """(N, classes) log-probabilities of the model in evaluation mode."""
    from . import runtime
    t, _ = _eval_graph(model, images.shape[1:])
    with runtime._EvalMode(model):
        out = model(images)
    if out.ndim != 2:
        raise ValueError(f"{op}: the model's output {out.shape} is not (N, classes) scores")
    return _log_probs(out, _output_op(t))


def _check_labels(labels, k, op):
    bad = labels[(labels < 0) | (labels >= k)]
    if bad.size:
        raise ValueError(f"{op}: label {int(bad[0])} is not one of the model's {k} classes (0 to {k - 1})")


def _class_names(classes, k):
    names = [str(c) for c in classes or []]
    return names[:k] if len(names) >= k else [str(i) for i in range(k)]


# ------------------------------------------------------------------------------ drawing helpers
def _mosaic(grid, gap):
    """(rows, cols, h, w) tiles as one image, NaN (drawn as the background) between them."""
    rows, cols, h, w = grid.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = grid[r, c]
    return out


def _gap(h):
    return max(1, int(round(h * 0.12)))


def _cmap(name, bad):
    import matplotlib
    return matplotlib.colormaps[name].with_extremes(bad=bad)


def _pct(v):
    return f"{100 * v:.2f} %"


def _prob(p):
    """A probability in a few characters: 0.97, 0.003, 2e-07."""
    return f"{p:.2f}" if p >= 0.095 else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


# ------------------------------------------------------------------------------ history
_HISTORY_FIELDS = ("loss", "train_accuracy", "eval_loss", "eval_accuracy")


def _history(history, op):
    """(records, args or None) from a History, its to_dict(), a list of records, or the JSON
    file `pylenet train --history` writes ({"args": ..., "history": {"epochs": [...]}})."""
    from .training import History
    args, source = None, "history"
    data = history
    if isinstance(history, (str, os.PathLike)):
        source = os.fspath(history)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{op}: no such history file: {source}")
        try:
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{op}: {source} is not a JSON history ({e})") from None
    if isinstance(data, History):
        records = data.epochs
    elif isinstance(data, dict):
        if isinstance(data.get("history"), dict):  # the file pylenet train --history writes
            args = data.get("args") if isinstance(data.get("args"), dict) else None
            data = data["history"]
        records = data.get("epochs")
    elif isinstance(data, (list, tuple)):
        records = data
    else:
        raise TypeError(f"{op}: expected a History, its to_dict(), a list of epoch records or a JSON file, "
                        f"got {type(history).__name__}")
    if not isinstance(records, (list, tuple)):
        raise ValueError(f"{op}: {source} holds no list of epochs (expected {{'epochs': [...]}})")
    if not records:
        raise ValueError(f"{op}: {source} has no epochs to plot")
    clean = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{op}: epoch record {i} of {source} is a {type(r).__name__}, not a dict")
        e = r.get("epoch", i + 1)
        if isinstance(e, bool) or not isinstance(e, (int, float)) or e != int(e):
            raise ValueError(f"{op}: epoch record {i} of {source} has epoch {e!r}, not a whole number")
        row = {"epoch": int(e)}
        for key in _HISTORY_FIELDS:
            v = r.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{op}: epoch {int(e)} of {source} has {key} = {v!r}, not a finite number")
            row[key] = float(v)
        if "loss" not in row:
            raise ValueError(f"{op}: epoch {int(e)} of {source} has no loss")
        if clean and row["epoch"] <= clean[-1]["epoch"]:
            raise ValueError(f"{op}: the epochs of {source} are not in increasing order "
                             f"({clean[-1]['epoch']} then {row['epoch']})")
        clean.append(row)
    return clean, args


def plot_history(history, path, title=None):
    """Loss (left) and accuracy (right) per epoch, train and eval, as a PNG at ``path``.

    history: what ``pylenet.train`` returns, its ``to_dict()``, a list of epoch records, or
    the JSON file ``pylenet train --history`` writes (whose ``args`` name the model and data
    in the title). Returns the Figure."""
    op = "plot_history"
    _matplotlib(op)
    path = _check_out(path, op)
    records, args = _history(history, op)
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig = _figure(op, (11, 4.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    style = {"train": dict(color="#1f77b4", marker="o", markersize=4, linewidth=1.8,
                           label="train (training set, during the epoch)"),
             "eval": dict(color="#d62728", marker="s", markersize=4, linewidth=1.8,
                          label="eval (test set, after it)")}
    for ax, (train_key, eval_key), scale, ylabel in (
            (ax_loss, ("loss", "eval_loss"), 1, "loss (cross-entropy)"),
            (ax_acc, ("train_accuracy", "eval_accuracy"), 100, "accuracy (%)")):
        for which, key in (("train", train_key), ("eval", eval_key)):
            pts = [(r["epoch"], r[key] * scale) for r in records if key in r]
            if pts:
                ax.plot(*zip(*pts), **style[which])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
            ax.set_xticks(epochs)
        if ax.get_lines():
            ax.legend(loc="best", fontsize=9)
    ax_loss.set_title("loss per epoch")
    ax_acc.set_title("accuracy per epoch")
    if title is None:
        title = "training history"
        if args and args.get("model"):
            title = f"{args['model']} on {args.get('dataset', '?')}"
        last = records[-1]
        acc = [(r["eval_accuracy"], r["epoch"]) for r in records if "eval_accuracy" in r]
        title += f": {len(records)} epoch{'s' if len(records) != 1 else ''}"
        if acc:
            best = max(acc)
            title += f", eval accuracy {_pct(acc[-1][0])} at epoch {acc[-1][1]} (best {_pct(best[0])}, epoch {best[1]})"
        elif "train_accuracy" in last:
            title += f", train accuracy {_pct(last['train_accuracy'])} at epoch {last['epoch']}"
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# ------------------------------------------------------------------------------ conv layers and filters
def conv_layers(model):
    """[(name, weight)] of the model's convolutions, in the order its forward applies them
    (the order of its Conv2d modules if it cannot be traced): a Conv2d module by its path
    ("conv1", "3"), an ``F.conv2d`` on a parameter by the parameter's name."""
    from .graph import TraceError
    from .nn.layers import Conv2d
    model = _as_model(model, "conv_layers")
    mods = [(p, m) for p, m in model.named_modules() if isinstance(m, Conv2d)]
    by_weight = {id(m.weight): p for p, m in mods}
    found = []
    shape = getattr(model, "input_shape", None) or model.__dict__.get("_last_input_shape")
    if shape:
        try:
            t, names = _eval_graph(model, shape)
        except (TraceError, ValueError):
            t = None
        if t is not None:
            from .checkpoint import _lookup
            for n in t.graph.nodes():
                if n["op"] == "conv2d" and n["inputs"][1] in names:
                    w = _lookup(model, names[n["inputs"][1]])
                    name = by_weight.get(id(w), names[n["inputs"][1]])
                    if name not in [f[0] for f in found]:
                        found.append((name, w))
    for p, m in mods:  # layers the forward does not use (or no trace): still the model's
        if p not in [f[0] for f in found]:
            found.append((p, m.weight))
    return found


def _conv_layer(model, layer, op):
    layers = conv_layers(model)
    if not layers:
        raise ValueError(f"{op}: {_model_name(model)} has no conv layers")
    if layer is None:
        return layers[0]
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise TypeError(f"{op}: layer must be a module path (str) such as {layers[0][0]!r}, got {type(layer).__name__}")
    key = str(layer)
    key = key[:-len(".weight")] if key.endswith(".weight") else key
    for name, w in layers:
        if key in (name, name[:-len(".weight")] if name.endswith(".weight") else name):
            return name, w
    names = ", ".join(n for n, _ in layers)
    other = dict(model.named_modules()).get(key)
    if other is not None:
        raise ValueError(f"{op}: layer {key!r} is a {type(other).__name__}, not a conv layer (conv layers: {names})")
    raise ValueError(f"{op}: {_model_name(model)} has no layer {key!r} (conv layers: {names})")


def _layer_label(model, name):
    m = dict(model.named_modules()).get(name)
    if m is None:
        return f"F.conv2d on {name}"
    return f"layer [{name}] {type(m).__name__}" if name.isdigit() else f"{name} ({type(m).__name__})"


def plot_filters(model, path, layer=None):
    """A conv layer's filters as a grid of tiles, on one colour scale symmetric about 0
    (red positive, blue negative, white 0).

    layer: the module path of a conv layer ("conv2", "3"; see ``conv_layers``), default the
    first one the forward applies. A layer of one input channel shows one tile per filter; a
    layer of several shows one column per filter (output channel) and one row per input
    channel. model: a Module or a checkpoint path. Returns the Figure."""
    op = "plot_filters"
    _matplotlib(op)
    path = _check_out(path, op)
    model = _as_model(model, op)
    name, w = _conv_layer(model, layer, op)
    w = np.asarray(w, dtype=np.float32)
    o, i, kh, kw = w.shape
    vmax = float(np.abs(w).max()) or 1.0
    cmap = _cmap("RdBu_r", "#c8c8c8")
    title = (f"{_model_name(model)} · {_layer_label(model, name)}: {o} filters of {i}×{kh}×{kw} "
             f"(one colour scale, ±{vmax:.3g})")
    if i == 1:  # one small picture per filter, numbered
        cols = o if o <= 12 else 8 if o <= 64 else 16
        rows = -(-o // cols)
        tile = 1.0 if cols <= 8 else 0.75
        fig = _figure(op, (max(5.5, cols * tile + 1.6), rows * (tile + 0.25) + 0.8))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for k, ax in enumerate(axes):
            ax.set_axis_off()
            if k < o:
                im = ax.imshow(w[k, 0], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
                ax.set_title(f"filter {k}" if cols <= 8 else str(k), fontsize=9)
        cbar = fig.colorbar(im, ax=list(axes), shrink=0.9 if rows > 1 else 1.0, aspect=15 * max(1, rows) ** 0.5)
        cbar.set_label("weight")
        fig.suptitle(title, fontsize=11)
        return _save(fig, path)
    gap = _gap(max(kh, kw))
    grid = np.transpose(w, (1, 0, 2, 3))  # rows: input channels, columns: filters
    image = _mosaic(grid, gap)
    tile = min(0.9, max(0.16, 13.0 / o), max(0.16, 8.0 / i))  # inches per kernel
    width = o * tile * (kw + gap) / kw + 2.0
    height = i * tile * (kh + gap) / kh + 1.3
    fig = _figure(op, (max(6.0, width), max(3.0, height)))
    ax = fig.add_subplot()
    im = ax.imshow(image, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    step_x, step_y = max(1, math.ceil(o / 32)), max(1, math.ceil(i / 24))
    ax.set_xticks([c * (kw + gap) + (kw - 1) / 2 for c in range(0, o, step_x)],
                  [str(c) for c in range(0, o, step_x)], fontsize=8)
    ax.set_yticks([r * (kh + gap) + (kh - 1) / 2 for r in range(0, i, step_y)],
                  [str(r) for r in range(0, i, step_y)], fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("filter (output channel)")
    ax.set_ylabel("input channel")
    for side in ax.spines.values():
        side.set_visible(False)
    cbar = fig.colorbar(im, ax=ax, shrink=min(1.0, max(0.6, 2.5 / height)), pad=0.015)
    cbar.set_label("weight")
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


# ------------------------------------------------------------------------------ feature maps
class Stage(NamedTuple):
    """One row of the feature-map figure: a conv or pool layer's output for the image."""
    name: str            # e.g. "conv1 (Conv2d) → F.relu", "[2] MaxPool2d"
    kind: str            # "conv" or "pool"
    value: np.ndarray    # (C, H, W): the value that flows on (a conv's after the activation that follows it)


class FeatureMaps(NamedTuple):
    input: np.ndarray            # (C, H, W): what the model was given, normalised
    normalization: object        # (mean, std) applied to the image, or None if used as given
    stages: list                 # [Stage] in the order the forward computes them
    output: np.ndarray           # the model's output for the image: (classes,) for a classifier
    probabilities: object        # (classes,) softmax of the output (None if it is not (1, classes))
    values: dict                 # {graph value id: array}: every value of the eval-mode graph


_FOLLOWERS = ("relu", "tanh", "sigmoid", "leaky_relu", "batch_norm", "dropout")
_POOLS = ("max_pool2d", "avg_pool2d")


def _prepare_image(model, image, normalized, op):
    """(x (1, C, H, W) float32, normalisation applied or None)."""
    x = np.asarray(image)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{op}: image must hold real numbers, got dtype {x.dtype}")
    shape = getattr(model, "input_shape", None)
    want = tuple(shape) if shape else None
    got = x.shape
    if x.ndim == 4 and x.shape[0] == 1:  # a batch of one
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or (want is not None and tuple(x.shape) != want):
        if want is not None:
            hint = f"({want[1]}, {want[2]}) or {want}" if len(want) == 3 and want[0] == 1 else f"{want}"
        else:
            hint = "(H, W) or (C, H, W)"
        raise ValueError(f"{op}: image of shape {got} does not fit the model: expected one image {hint}")
    if not np.isfinite(x).all():
        raise ValueError(f"{op}: image contains NaN or inf")
    if normalized not in (None, True, False):
        raise TypeError(f"{op}: normalized must be True, False or None, got {normalized!r}")
    if x.dtype == np.uint8:  # pixels 0..255: raw, whatever normalized says
        x, normalized = x / 255.0, False
    x = x.astype(np.float64)
    norm = _normalization(model)
    raw = (not normalized) if normalized is not None else (x.min() >= 0 and x.max() <= 1)
    applied = None
    if raw and norm:
        x = (x - norm[0]) / norm[1]
        applied = tuple(norm)
    return np.ascontiguousarray(x[None], dtype=np.float32), applied


def _node_name(t, i, n):
    path, module = t.node_modules.get(i, (None, ""))
    if module:
        return f"[{path}] {module}" if path.isdigit() else f"{path} ({module})"
    name = f"F.{n['op']}"
    if n["op"] in _POOLS:
        k = n["attrs"]["kernel_size"]
        name += f" {k[0]}×{k[1]}"
    return name


def feature_maps(model, image, normalized=None):
    """The image's way through the model in evaluation mode (a FeatureMaps): every conv and
    pool layer's output, the output and the class probabilities, computed by replaying the
    model's traced graph op by op with ``pylenet.functional`` on NumPy arrays.

    A conv layer's stage is the value after the element-wise ops that follow it alone (its
    activation, batch norm), the maps the next layer sees. image: (H, W) or (C, H, W) (a
    batch of one also works); ``normalized``: see the module's docstring."""
    from . import runtime
    from .checkpoint import replay
    op = "feature_maps"
    model = _as_model(model, op)
    x, applied = _prepare_image(model, image, normalized, op)
    t, names = _eval_graph(model, x.shape[1:])
    nodes = t.graph.nodes()
    with runtime._EvalMode(model):
        env = replay(model, nodes, names, t.graph.input, x)
    consumers = {}
    for i, n in enumerate(nodes):
        for v in n["inputs"]:
            consumers.setdefault(v, []).append(i)
    stages = []
    for i, n in enumerate(nodes):
        if n["op"] != "conv2d" and n["op"] not in _POOLS:
            continue
        label, v = [_node_name(t, i, n)], n["outputs"][0]
        while len(consumers.get(v, [])) == 1 and v != t.output:
            j = consumers[v][0]
            if nodes[j]["op"] not in _FOLLOWERS or nodes[j]["inputs"][0] != v:
                break
            label.append(_node_name(t, j, nodes[j]))
            v = nodes[j]["outputs"][0]
        value = np.asarray(env[v])
        if value.ndim == 4:
            stages.append(Stage(" → ".join(label), "conv" if n["op"] == "conv2d" else "pool", value[0]))
    out = np.asarray(env[t.output])
    probs = None
    if out.ndim == 2 and out.shape[0] == 1:
        probs = np.exp(_log_probs(out, _output_op(t)))[0]
    return FeatureMaps(x[0], applied, stages, out[0] if out.shape[0] == 1 else out, probs,
                       {k: np.asarray(v) for k, v in env.items() if isinstance(v, np.ndarray)})


def _grey(ax, img, title, vmin=None, vmax=None, fontsize=9):
    if img.shape[0] == 3:  # a colour input, shown as one
        lo, hi = float(img.min()), float(img.max())
        ax.imshow(np.moveaxis((img - lo) / ((hi - lo) or 1.0), 0, -1), interpolation="nearest")
    else:
        ax.imshow(img[0], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize)


def plot_feature_maps(model, image, path, normalized=None, label=None, classes=None, max_maps=64):
    """The figure of the textbook: the input image, every conv and pool layer's feature maps
    (one row per layer, each on its own grey scale, the range in its title) and the class
    probabilities as a bar chart, for one image in evaluation mode.

    image: (H, W) or (C, H, W); normalized: see the module's docstring. label: the true class,
    if known (marked on the chart); classes: the class names (default 0, 1, ...); max_maps:
    the most maps drawn per layer (the title says when some are left out). Returns the Figure."""
    op = "plot_feature_maps"
    _matplotlib(op)
    path = _check_out(path, op)
    model = _as_model(model, op)
    fm = feature_maps(model, image, normalized)
    if not fm.stages:
        raise ValueError(f"{op}: {_model_name(model)} has no conv or pool layers to show")
    if isinstance(max_maps, bool) or not isinstance(max_maps, int) or max_maps < 1:
        raise ValueError(f"{op}: max_maps must be a whole number >= 1, got {max_maps!r}")
    probs = fm.probabilities
    k = len(probs) if probs is not None else 0
    names = _class_names(classes, k)
    if label is not None and not (isinstance(label, (int, np.integer)) and 0 <= label < max(k, 1)):
        raise ValueError(f"{op}: label {label!r} is not a class of the model's {k} outputs")

    # Layout in inches, top to bottom: the input and the probabilities, then one row per
    # stage; every map tile is drawn at the same size, so a 5x5 map is as big as a 28x28 one.
    per_line = 16
    g = 0.12  # the gap between tiles, in tiles
    cols_max = max(min(len(s.value), max_maps, per_line) for s in fm.stages)
    tile = min(0.85, 13.0 / (cols_max * (1 + g)))
    margin, title_h, row_gap = 0.35, 0.34, 0.16
    top_h = 2.5
    long_names = max((len(n) for n in names), default=1) > 3
    width = max(10.0, cols_max * tile * (1 + g) + 2 * margin)
    rows = []
    for s in fm.stages:
        c, h, w = s.value.shape
        shown = min(c, max_maps)
        cols = min(shown, per_line)
        lines = -(-shown // cols)
        aspect = h / w
        rows.append((s, shown, cols, lines, aspect, (cols * (1 + g) - g) * tile, (lines * (1 + g) - g) * tile * aspect))
    below_top = 1.0 if long_names else 0.55
    height = 0.55 + top_h + below_top + sum(title_h + r[6] + row_gap for r in rows) + 0.15
    fig = _figure(op, (width, height), layout=None)

    def box(left, top, w, h):  # inches from the top-left corner -> figure fractions
        return [left / width, 1 - (top + h) / height, w / width, h / height]

    fig.text(margin / width, 1 - 0.3 / height, f"{_model_name(model)}: what each layer computes for one image "
             "(evaluation mode)", fontsize=13, va="center")
    y = 0.55
    side = top_h - 0.45
    ax = fig.add_axes(box(margin, y + 0.35, side, side))
    c, h, w = fm.input.shape
    note = (f"normalised: (x − {fm.normalization[0]:g}) / {fm.normalization[1]:g}" if fm.normalization
            else "used as given")
    _grey(ax, fm.input, f"input {c}×{h}×{w}\n{note}", fontsize=9)
    if probs is not None:
        pred = int(np.argmax(probs))
        left = margin + side + 1.1
        bw = min(width - left - margin, 0.55 * k + 1.0)
        ax = fig.add_axes(box(left, y + 0.35, bw, side))
        colours = ["#1f77b4" if j != pred else "#ff7f0e" for j in range(k)]
        ax.bar(range(k), probs, color=colours, edgecolor=["black" if j == label else "none" for j in range(k)],
               linewidth=1.5)
        ax.set_ylim(0, 1.12)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("probability")
        ax.set_xticks(range(k), names, rotation=30 if long_names else 0, ha="right" if long_names else "center",
                      fontsize=9)
        if label is not None:
            ax.get_xticklabels()[label].set_fontweight("bold")
        ax.text(pred, probs[pred] + 0.03, f"{probs[pred]:.3f}", ha="center", va="bottom", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(True, axis="y", alpha=0.3)
        verdict = f"predicted {names[pred]} (p = {probs[pred]:.3f})"
        if label is not None:
            verdict += f", true {names[label]}" + (" ✓" if label == pred else " ✗")
        ax.set_title(f"class probabilities: {verdict}", fontsize=10)
    y += top_h + below_top
    for s, shown, cols, lines, aspect, w_in, h_in in rows:
        c, h, w = s.value.shape
        lo, hi = float(s.value.min()), float(s.value.max())
        hi = hi if hi > lo else lo + 1  # a constant layer: all black, not an error
        ax = fig.add_axes(box(margin, y + title_h, w_in, h_in))
        for j in range(shown):  # in tile units: tile j at column j % cols, line j // cols
            r, q = divmod(j, cols)
            x0, y0 = q * (1 + g), r * (1 + g) * aspect
            ax.imshow(s.value[j], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect="auto",
                      extent=(x0, x0 + 1, y0 + aspect, y0))
        ax.set_xlim(0, cols * (1 + g) - g)
        ax.set_ylim((lines * (1 + g) - g) * aspect, 0)
        ax.set_axis_off()
        more = f" (the first {shown} shown)" if shown < c else ""
        fig.text(margin / width, 1 - (y + title_h * 0.45) / height,
                 f"{s.name}: {c} maps {h}×{w}{more}, values {float(s.value.min()):.3g} … {float(s.value.max()):.3g} "
                 "(black … white)", fontsize=9.5, va="center")
        y += title_h + h_in + row_gap
    return _save(fig, path)


# ------------------------------------------------------------------------------ confusion and worst
def confusion_matrix(model, dataset):
    """(matrix, accuracy): matrix[true, predicted] counts of the model's predictions on the
    dataset in evaluation mode (classes x classes, int64), and the share it got right."""
    op = "confusion_matrix"
    model = _as_model(model, op)
    images, labels, _, _ = _dataset(model, dataset, op)
    logp = _log_probs_of(model, images, op)
    k = logp.shape[1]
    _check_labels(labels, k, op)
    pred = logp.argmax(axis=1)
    m = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
    return m, float((pred == labels).mean())


def plot_confusion(model, dataset, path, classes=None):
    """The confusion matrix of the model on a dataset (rows: true class, columns: predicted),
    every cell's count written in it, coloured by its share of the true class (so the errors
    show), the overall accuracy in the title. model: a Module or a checkpoint path; dataset: a
    pylenet Dataset or (images, labels). Returns the Figure."""
    op = "plot_confusion"
    _matplotlib(op)
    path = _check_out(path, op)
    model = _as_model(model, op)
    m, acc = confusion_matrix(model, dataset)
    from matplotlib.colors import PowerNorm
    k = len(m)
    names = _class_names(classes or getattr(dataset, "classes", None), k)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(6.5, 0.62 * k + 2.8)
    fig = _figure(op, (size + 1.4, size))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.4, vmin=0, vmax=1), interpolation="nearest")
    if k <= 40:
        font = 9 if k <= 12 else 7 if k <= 20 else 5
        for r in range(k):
            for c in range(k):
                if m[r, c] or r == c:
                    ax.text(c, r, f"{m[r, c]:,}", ha="center", va="center", fontsize=font,
                            color="white" if share[r, c] > 0.35 else "black")
    long_names = max(len(n) for n in names) > 3
    ax.set_xticks(range(k), names, rotation=40 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(length=0)
    # Per-class recall on the right: which digits the model gets wrong most.
    right = ax.secondary_yaxis("right")
    recall = np.diag(m) / np.maximum(m.sum(axis=1), 1)
    right.set_yticks(range(k), [_pct(v) for v in recall], fontsize=8)
    right.set_ylabel("correct per true class", fontsize=9)
    right.tick_params(length=0)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.03)
    cbar.set_label("share of the true class (colour)")
    name = getattr(dataset, "name", None)
    n = int(m.sum())
    ax.set_title(f"{_model_name(model)} on {name + ', ' if name else ''}{n:,} images: accuracy {_pct(acc)} "
                 f"({n - int(np.trace(m)):,} wrong)", fontsize=11)
    return _save(fig, path)


class Worst(NamedTuple):
    """The highest-loss examples of a dataset, worst first."""
    indices: np.ndarray      # positions in the dataset
    losses: np.ndarray       # cross-entropy of each: -log p(true class)
    labels: np.ndarray       # true classes
    predicted: np.ndarray    # the model's classes
    probabilities: np.ndarray  # (n, classes) softmax of the model's outputs


def worst_examples(model, dataset, n=16):
    """The n examples of the dataset with the highest loss (-log of the probability the model
    gives the true class, in evaluation mode), worst first; ties in the dataset's order."""
    op = "worst_examples"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{op}: n must be a whole number >= 1, got {n!r}")
    model = _as_model(model, op)
    images, labels, _, _ = _dataset(model, dataset, op)
    logp = _log_probs_of(model, images, op)
    _check_labels(labels, logp.shape[1], op)
    loss = -logp[np.arange(len(labels)), labels]
    order = np.argsort(-loss, kind="stable")[:int(n)]
    return Worst(order, loss[order], labels[order], logp[order].argmax(axis=1), np.exp(logp[order]))


def plot_worst(model, dataset, path, n=16, classes=None):
    """A grid of the n worst-classified images of a dataset (highest loss first), each titled
    with its true and predicted class and the probabilities the model gives them; red titles
    are wrong predictions. Returns the Figure."""
    op = "plot_worst"
    _matplotlib(op)
    path = _check_out(path, op)
    model = _as_model(model, op)
    w = worst_examples(model, dataset, n)
    images, _, data_classes, display = _dataset(model, dataset, op)
    k = w.probabilities.shape[1]
    names = _class_names(classes or data_classes, k)
    count = len(w.indices)
    long_names = max(len(n) for n in names) > 4
    cols = min(count, max(4, math.ceil(math.sqrt(count))))
    rows = -(-count // cols)
    fig = _figure(op, (1.75 * cols + 0.3, (2.3 if long_names else 1.95) * rows + 0.8))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for a in axes:
        a.set_axis_off()
    for j, i in enumerate(w.indices):
        img = images[i]
        vmin = vmax = None
        if display:  # the pixels as they were, on one scale for every tile
            img = img * display[1] + display[0]
            vmin, vmax = 0.0, 1.0
        _grey(axes[j], img, "", vmin, vmax)
        axes[j].set_axis_on()
        for side in axes[j].spines.values():
            side.set_visible(False)
        t, p = int(w.labels[j]), int(w.predicted[j])
        first = f"#{int(i)}: true {names[t]} → {names[p]}"
        probs = f"p({names[p]}) {_prob(w.probabilities[j, p])}" + (
            f", p({names[t]}) {_prob(w.probabilities[j, t])}" if t != p else "")
        if long_names:  # one name per line, so titles do not run into each other
            first = f"#{int(i)}: true {names[t]}\npredicted {names[p]}"
            probs = probs.replace(", ", "\n")
        axes[j].set_title(f"{first}\n{probs}", fontsize=8.5, color="#c00000" if t != p else "#006000")
    wrong = int((w.labels != w.predicted).sum())
    name = getattr(dataset, "name", None)
    fig.suptitle(f"{_model_name(model)}: the {count} highest-loss of {len(images):,} images"
                 f"{' of ' + name if name else ''} ({wrong} of them misclassified)", fontsize=11)
    return _save(fig, path)
