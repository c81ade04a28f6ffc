"""train / evaluate: the Python side of the training loop.

Python shuffles (a seeded permutation per epoch), then hands the whole epoch to the native
network in one call with the GIL released; it is called back only to draw progress. The
parameters are copied back into the model after every epoch, so an interrupted or diverged
run leaves the model at its last finished epoch.
"""
import sys
import time

import numpy as np

from .optim import make_optimizer, make_schedule

__all__ = ["train", "evaluate", "History"]


class History:
    """Per-epoch records: loss, train_accuracy, eval_accuracy, eval_loss, seconds, samples_per_sec, lr."""

    def __init__(self):
        self.epochs = []

    def append(self, record):
        self.epochs.append(record)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [e.get(key) for e in self.epochs]
        return self.epochs[key]

    def __len__(self):
        return len(self.epochs)

    FIELDS = ("epoch", "loss", "train_accuracy", "eval_accuracy", "eval_loss", "seconds", "samples_per_sec", "lr")

    def __getattr__(self, key):
        if key not in self.FIELDS:  # a typo should fail, not return a list of None
            raise AttributeError(f"History has no field {key!r} (fields: {', '.join(self.FIELDS)})")
        return [e.get(key) for e in self.epochs]

    def to_dict(self):
        return {"epochs": list(self.epochs)}

    def __repr__(self):
        return f"History({len(self.epochs)} epochs, last={self.epochs[-1] if self.epochs else None})"


def _arrays(data, op):
    """(images float32 C-contiguous, labels int64) from a Dataset or an (images, labels) pair."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    else:
        raise TypeError(f"{op}: expected a pylenet Dataset or an (images, labels) pair, got {type(data).__name__}")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype.kind not in "biuf":
        raise TypeError(f"{op}: images must hold real numbers, got dtype {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if len(images) == 0:
        raise ValueError(f"{op}: the dataset is empty")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f"{op}: images contain NaN or inf")
    return images, np.ascontiguousarray(labels, dtype=np.int64)


def device_index(device, op):
    """None for the CPU ("cpu" or None), the CUDA device id for "cuda" / "cuda:N".

    Raises ValueError for a device string that means nothing, RuntimeError (saying why) when
    CUDA cannot be used: a build without CUDA, no driver or no GPU, or an id out of range."""
    if device is None or device == "cpu":
        return None
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"{op}: unknown device {device!r} (expected 'cpu', 'cuda' or 'cuda:N')")
    index = 0
    if device.startswith("cuda:"):
        text = device[5:]
        if not text.isdigit():
            raise ValueError(f"{op}: bad device {device!r} (expected 'cuda:N' with N a device number)")
        index = int(text)
    from . import cuda
    cuda.require(f"{op}(device={device!r})")
    count = cuda.device_count()
    if index >= count:
        raise ValueError(f"{op}: device {device!r} does not exist: {count} CUDA device(s) found")
    return index


class _ProgressBar:
    def __init__(self, enabled, epoch, epochs, stream=sys.stderr):
        self.enabled, self.epoch, self.epochs, self.stream = enabled, epoch, epochs, stream
        self.t0 = time.perf_counter()

    def __call__(self, done, total, stats):
        if self.enabled:
            frac = done / total
            bar = "#" * int(frac * 30)
            rate = stats["samples"] / max(time.perf_counter() - self.t0, 1e-9)
            self.stream.write(f"\repoch {self.epoch}/{self.epochs} [{bar:<30}] {frac:6.1%} "
                              f"loss {stats['loss_sum'] / stats['samples']:.4f} "
                              f"acc {stats['correct'] / stats['samples']:.2%} {rate:,.0f} samples/s")
            self.stream.flush()
        return True

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def train(model, train_set, *, epochs=10, batch_size=64, optimizer=None, schedule=None, eval_set=None,
          device="cpu", seed=0, progress=True, conv_algo="heuristic", on_epoch=None):
    """Trains ``model`` in place and returns a History.

    optimizer: an Optimizer, a name ("sgd", "adam", "adadelta") or None (SGD lr 0.01);
    its state is kept on the object, so a second call (or a loaded checkpoint) resumes.
    schedule: a Schedule or a name ("constant", "step", "cosine", "inv").
    progress: a progress bar on stderr when it is a terminal.
    on_epoch: called with each epoch's record (e.g. to print or checkpoint).
    device: "cpu", or "cuda" / "cuda:N": the datasets are uploaded once, batches are gathered
    on the GPU, and the host reads only the progress numbers.
    conv_algo: "heuristic" (default: a fixed rule per layer), "naive", "im2col", "direct" (CPU)
    or "implicit_gemm" (CUDA), or "auto" (time each once; the choice can differ between runs).
    Results are bit-identical for the same seed, whatever the thread count (with a fixed
    conv_algo, i.e. anything but "auto"), and run after run on the same GPU.
    """
    dev = device_index(device, "train")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"train: {name} must be a positive int, got {v!r}")
    images, labels = _arrays(train_set, "train")
    eval_arrays = _arrays(eval_set, "train (eval_set)") if eval_set is not None else None
    opt = make_optimizer(optimizer)
    sched = make_schedule(schedule)
    batch_size = int(min(batch_size, len(images)))

    net = model._compile(batch_size, opt, conv_algo, device=dev)
    model._load_into(net)
    if dev is not None:  # the datasets go to the device once; epochs gather batches there
        train_data = net.upload(images, labels, "train")
        eval_data = net.upload(*eval_arrays, "train (eval_set)") if eval_arrays is not None else None
    if opt.state is not None:  # resume
        bufs = opt.state["buffers"][: net.num_state_buffers]
        if any(np.shape(b) != (net.num_params,) for b in bufs):
            raise ValueError(f"train: the optimizer's saved state belongs to a model with "
                             f"{np.size(bufs[0])} parameters, this one has {net.num_params}; "
                             "use a fresh optimizer for a different model")
        for i, buf in enumerate(bufs):
            if dev is None:
                net.state(i)[:] = buf
            else:
                net.set_state(i, np.ascontiguousarray(buf, dtype=np.float32))
        net.optimizer_steps = int(opt.state["steps"])
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(images) // batch_size)
    sched_spec = sched.spec(steps_per_epoch, epochs)
    iteration = net.optimizer_steps
    show = bool(progress) and sys.stderr.isatty()
    history = History()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(images)).astype(np.int64)
        lr = float(sched.lr_at(opt.lr, iteration, steps_per_epoch, epochs))
        bar = _ProgressBar(show, epoch, epochs)
        t0 = time.perf_counter()
        try:
            data = (images, labels) if dev is None else (train_data,)
            stats, iteration = net.train_epoch(*data, order, batch_size, sched_spec, iteration, bar,
                                               max(1, steps_per_epoch // 100))
        finally:
            bar.close()
        # Only a finished epoch reaches the model: after an error or Ctrl-C inside an epoch the
        # model and optimizer keep the state of the last finished one.
        model._store_from(net)
        opt.state = {"buffers": [net.state(i).copy() for i in range(net.num_state_buffers)],
                     "steps": int(net.optimizer_steps)}
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "loss": stats["loss_sum"] / stats["samples"],
                  "train_accuracy": stats["correct"] / stats["samples"], "seconds": seconds,
                  "samples_per_sec": stats["samples"] / seconds, "lr": lr}
        if eval_arrays is not None:
            ev = net.evaluate(*eval_arrays) if dev is None else net.evaluate(eval_data)
            record["eval_loss"] = ev["loss_sum"] / ev["samples"]
            record["eval_accuracy"] = ev["correct"] / ev["samples"]
        history.append(record)
        if show:
            extra = f", eval acc {record['eval_accuracy']:.2%}" if "eval_accuracy" in record else ""
            sys.stderr.write(f"epoch {epoch}: loss {record['loss']:.4f}, train acc {record['train_accuracy']:.2%}"
                             f"{extra}, {seconds:.1f} s\n")
        if on_epoch is not None:
            on_epoch(record)
    return history


def evaluate(model, dataset, batch_size=256, device="cpu"):
    """{"accuracy": float in [0, 1], "loss": mean cross-entropy} of model on dataset."""
    dev = device_index(device, "evaluate")
    images, labels = _arrays(dataset, "evaluate")
    if images.shape[1:] != model.input_shape:
        raise ValueError(f"evaluate: images of shape {images.shape} do not match the model input {model.input_shape}")
    net = model._inference_net(min(batch_size, len(images)), dev)
    ev = net.evaluate(images, labels) if dev is None else net.evaluate(net.upload(images, labels, "evaluate"))
    return {"accuracy": ev["correct"] / ev["samples"], "loss": ev["loss_sum"] / ev["samples"]}
