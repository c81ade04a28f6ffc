"""train / evaluate: the Python side of the training loop.

Python shuffles (a seeded permutation per epoch), then hands the whole epoch to the native
executor in one call with the GIL released; it is called back only to draw progress. The
executor updates the model's own parameters step by step. Only finished epochs reach the
model: when an epoch fails (a step whose output is not finite, an error, Ctrl-C), the model
and the optimizer are put back as they were at the end of the last finished epoch.
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
        self.stopped_early = False  # on_epoch returned False

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
        return {"epochs": list(self.epochs), "stopped_early": self.stopped_early}

    def __repr__(self):
        return f"History({len(self.epochs)} epochs, last={self.epochs[-1] if self.epochs else None})"


def _arrays(data, op, model=None):
    """(images float32 C-contiguous (N, C, H, W), labels int64) from what a user has:
      - a pylenet Dataset (or anything with ``images`` and ``labels`` arrays);
      - an ``(images, labels)`` pair of arrays;
      - any sequence with ``__len__`` and ``__getitem__`` giving ``(image, label)`` (a
        torchvision dataset: PIL images or tensors, int or tensor labels).
    Grey images without a channel axis (N, H, W) get one; channels-last colour (N, H, W, 3)
    becomes channels-first. uint8 images are pixels: scaled to [0, 1], then normalised as the
    model says (its ``normalization``), so they match data normalised the same way."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2 and (_labels_like(data[1]) or
                                                                 getattr(data[0], "ndim", 0) >= 3):
        images, labels = data
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes)):
        images, labels = _gather(data, op)
    else:
        raise TypeError(f"{op}: expected a pylenet Dataset, an (images, labels) pair or a sequence of (image, label) "
                        f"samples, got {type(data).__name__}")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype.kind not in "biuf":
        raise TypeError(f"{op}: images must hold real numbers, got dtype {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{op}: labels must be a vector (N,), got shape {labels.shape}")
    if len(images) == 0:
        raise ValueError(f"{op}: the dataset is empty")
    if len(images) != len(labels):
        raise ValueError(f"{op}: {len(images)} images but {len(labels)} labels")
    if images.ndim == 3:  # (N, H, W): grey images
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # channels last (PIL, NumPy pictures) -> first
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255)
        norm = getattr(model, "normalization", None)
        if norm:
            images = (images - np.float32(norm[0])) / np.float32(norm[1])
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f"{op}: images contain NaN or inf")
    return images, np.ascontiguousarray(labels, dtype=np.int64)


def _labels_like(v):
    """Whether v is a vector of labels (the second half of an (images, labels) pair), rather
    than the second (image, label) sample of a list of two."""
    if hasattr(v, "ndim"):
        return v.ndim == 1
    return isinstance(v, (list, tuple)) and all(isinstance(e, (int, np.integer)) for e in v)


def _gather(data, op):
    """Stacks the (image, label) samples of a sequence into two arrays."""
    n = len(data)
    images, labels = [], []
    for i in range(n):
        sample = data[i]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(f"{op}: item {i} of the {type(data).__name__} is a {type(sample).__name__}, not an "
                            "(image, label) pair")
        image, label = sample
        if hasattr(image, "detach"):  # a torch tensor
            image = image.detach().cpu().numpy()
        images.append(np.asarray(image))
        try:
            labels.append(int(label))
        except (TypeError, ValueError):
            raise TypeError(f"{op}: the label of item {i} is a {type(label).__name__}, not an integer") from None
    if not images:
        return np.zeros((0, 1, 1, 1), np.float32), np.zeros(0, np.int64)
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"{op}: the images of the {type(data).__name__} have different shapes: "
                         f"{', '.join(map(str, sorted(shapes)[:3]))}")
    return np.stack(images), np.asarray(labels, np.int64)


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


class _Snapshot:
    """Copies of everything a training call changes: the parameters, the buffers (running
    statistics) and the optimizer's state and step count (a few hundred KB for a LeNet)."""

    def __init__(self, model, opt):
        arrays = list(model.parameters()) + list(model.buffers()) + list(opt.state.get("buffers") or [])
        self.saved = [(a, a.copy()) for a in arrays]
        self.opt, self.steps = opt, int(opt.state["steps"])

    def finite(self):
        """Whether everything the epoch changed is finite now."""
        return all(a.dtype.kind != "f" or np.isfinite(a).all() for a, _ in self.saved)

    def restore(self):
        for a, saved in self.saved:
            a[...] = saved
        self.opt.state["steps"] = self.steps


def _interactive(stream):
    """A terminal, or a Jupyter kernel (whose output cells draw tqdm's widgets)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    return "ipykernel" in sys.modules


class _Progress:
    """train's progress output. On a terminal or in a notebook: tqdm bars, one over the epochs
    and one over the current epoch's images (rate, ETA, running loss and accuracy), with each
    finished epoch's line written above them. Anywhere else (a log file, a pipe): that one
    plain line per epoch only, so logs stay readable. Nothing when disabled."""

    def __init__(self, enabled, epochs, done, samples, stream=None):
        self.stream = stream or sys.stderr
        self.mode = ("bars" if _interactive(self.stream) else "lines") if enabled else None
        self.epochs, self.samples = epochs, samples
        self.outer = self.inner = None
        if self.mode == "bars":
            from tqdm.auto import tqdm
            self.tqdm = tqdm
            self.outer = tqdm(total=epochs, initial=done, desc="training", unit="epoch", position=0,
                              file=self.stream, dynamic_ncols=True)

    def start(self, epoch):
        """The callback the native epoch calls every few steps."""
        if self.mode == "bars":
            self.inner = self.tqdm(total=self.samples, desc=f"epoch {epoch}/{self.epochs}", unit="img",
                                   unit_scale=True, leave=False, position=1, file=self.stream, dynamic_ncols=True)
        return self._step

    def _step(self, done, total, stats):
        if self.inner is not None and stats["samples"]:
            self.inner.set_postfix(loss=f"{stats['loss_sum'] / stats['samples']:.4f}",
                                   acc=f"{stats['correct'] / stats['samples']:.2%}", refresh=False)
            self.inner.update(stats["samples"] - self.inner.n)
        return True

    def end(self, record=None):
        """Ends the current epoch's bar; with its record, writes the epoch's line."""
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        if record is None or self.mode is None:
            return
        line = format_epoch(record, self.epochs)
        if self.mode == "bars":
            self.outer.write(line, file=self.stream)
            self.outer.update(1)
        else:
            print(line, file=self.stream, flush=True)

    def close(self):
        self.end()
        if self.outer is not None:
            self.outer.close()
            self.outer = None


def format_epoch(record, epochs):
    """The one-line summary of an epoch's record, as train's progress output and the CLI print it."""
    ev = f"  eval acc {record['eval_accuracy']:.2%}" if "eval_accuracy" in record else ""
    return (f"epoch {record['epoch']:>2}/{epochs}: loss {record['loss']:.4f}  train acc {record['train_accuracy']:.2%}"
            f"{ev}  {record['seconds']:.2f} s  ({record['samples_per_sec']:,.0f} samples/s)")


def _training_state(epoch, epochs, batch_size, n, seed, rng, sched):
    """What a checkpoint holds beyond the model, the optimizer and the history (saved beside it
    in ``extra``), for an exact resume."""
    return {"epoch": epoch, "epochs": epochs, "batch_size": batch_size, "samples": n, "seed": seed,
            "shuffle": rng.bit_generator.state, "schedule": sched.config()}


def _resume(path, model, optimizer, schedule, batch_size, n, epochs):
    """(optimizer, schedule, seed, epochs done, shuffle generator, history) from a checkpoint
    that train(checkpoint=...) wrote, after loading its model and optimizer state into place."""
    from . import checkpoint
    from .optim import SCHEDULES
    extra = checkpoint.read_extra(path)
    state = extra.get("train_state")
    if not isinstance(state, dict):
        raise ValueError(f"train: {path} holds no training state to resume from (it was not written by "
                         "train(checkpoint=...) or pylenet train)")
    try:
        done, bs, samples = int(state["epoch"]), int(state["batch_size"]), int(state["samples"])
        seed = int(state["seed"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["shuffle"]
        saved_cfg = dict(state["schedule"])
        records = list(extra["history"]["epochs"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"train: {path} holds a malformed training state ({type(e).__name__}: {e})") from None
    # Exact means the same steps: the same data, batch size and schedule as the saved run.
    if samples != n or bs != batch_size:
        raise ValueError(f"train: {path} was trained on {samples} samples in batches of {bs}; resuming it exactly "
                         f"needs the same (got {n} samples, batch_size {batch_size})")
    # A built-in schedule is rebuilt from its config; a function or custom Schedule cannot be
    # saved, so it must be passed again (checked by its config: the function's name).
    if schedule is not None:
        saved_sched = make_schedule(schedule)
        if saved_sched.config() != saved_cfg:
            raise ValueError(f"train: {path} was trained with the schedule {saved_cfg}, not {saved_sched.config()}; "
                             "pass the same or none")
    elif saved_cfg.get("kind") in SCHEDULES:
        saved_sched = make_schedule(saved_cfg)
    else:
        raise ValueError(f"train: {path} was trained with the schedule {saved_cfg}, which a file cannot hold; pass "
                         "it again as schedule= to resume")
    if done >= epochs:
        raise ValueError(f"train: {path} has already trained {done} epochs; pass epochs > {done} to continue")
    _, opt = checkpoint.load(path, return_optimizer=True, model=model)
    if opt is None:
        raise ValueError(f"train: {path} holds no optimizer state to resume from")
    if optimizer is not None:
        given = make_optimizer(optimizer)
        if given.config() != opt.config():
            raise ValueError(f"train: {path} was trained with {opt}; pass the same optimizer or none")
        given.state = opt.state
        opt = given
    history = History()
    for r in records:
        history.append(r)
    return opt, saved_sched, seed, done, rng, history


def _evaluate_epoch(model, arrays, device_data, shape, device, dev):
    """Totals of the eval set after an epoch: on the CPU from the arrays, on a GPU from the copy
    uploaded there once."""
    from . import functional as F
    from . import runtime
    if device_data is None:
        return runtime.evaluate_arrays(model, *arrays, runtime.DEFAULT_INFERENCE_BATCH, device, loss=F.cross_entropy)
    with runtime._EvalMode(model):
        ev_ex = runtime.inference_executor(model, shape, runtime.DEFAULT_INFERENCE_BATCH, dev, loss=F.cross_entropy)
        ev_ex.upload_state()
        return ev_ex.evaluate_device(device_data)


def train(model, train_set, *, epochs=10, batch_size=64, optimizer=None, schedule=None, loss=None, eval_set=None,
          device="cpu", seed=0, progress=True, conv_algo="heuristic", on_epoch=None, checkpoint=None, resume=None,
          checkpoint_extra=None):
    """Trains ``model`` (any pylenet Module) in place and returns a History.

    train_set / eval_set: a pylenet Dataset, an ``(images, labels)`` pair of arrays, or any
    sequence of ``(image, label)`` samples (a torchvision dataset); uint8 pixels are scaled to
    [0, 1] and normalised with the model's ``normalization`` (see ``_arrays``).

    optimizer: an Optimizer, a name ("sgd", "adam", "adadelta") or None (SGD lr 0.01);
    its state is kept on the object, so a second call (or a loaded checkpoint) resumes.
    schedule: a Schedule, a name ("constant", "step", "cosine", "inv") or any function
    ``f(epoch, step) -> lr`` (epoch and optimizer step counted from 0; see optim.FunctionLR).
    loss: F.cross_entropy (default), F.nll_loss, or a function (output, labels) made of them.
    progress: on stderr, tqdm bars on a terminal or in a notebook, else one line per epoch.
    on_epoch: called with each epoch's record (e.g. to print); returning False stops training
    after that epoch (``history.stopped_early`` says so).
    checkpoint: a path written (atomically) at the end of every epoch with the model, the
    optimizer's state, the schedule, the epoch count and the shuffle generator's state (plus
    ``checkpoint_extra``), so Ctrl-C or a crash loses at most the epoch in progress.
    resume: such a path: its model and optimizer state are loaded into ``model`` and the
    optimizer, and training continues to ``epochs`` in total, bit-identical to the run that
    was not interrupted (same data and batch size; the seed and schedule come from the file).
    device: "cpu", or "cuda" / "cuda:N": the datasets are uploaded once, batches are gathered
    on the GPU, and the host reads only the progress numbers.
    conv_algo: "heuristic" (default: a fixed rule per layer), "naive", "im2col", "direct",
    "winograd" (CPU) or "implicit_gemm" (CUDA), or "auto" (time each once; the choice can
    differ between runs).
    seed: the shuffle of every epoch and the dropout masks (None: drawn from the generator
    pylenet.manual_seed seeds).
    The input shape comes from the data. The model trains in training mode and the eval set
    is evaluated in evaluation mode; the model's own mode is restored at the end. Parameters
    are updated in place, step by step; an epoch that fails (a non-finite output, an error,
    Ctrl-C) is rolled back to the end of the last finished one before the exception goes on.
    Results are bit-identical for the same seed, whatever the thread count
    (with a fixed conv_algo, i.e. anything but "auto"), and run after run on the same GPU.
    """
    from . import functional as F
    from . import runtime
    from .nn.module import Module
    if not isinstance(model, Module):
        raise TypeError(f"train: expected a pylenet Module, got {type(model).__name__}")
    dev = runtime._device(device, "train")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        runtime._positive_int(v, name, "train")
    images, labels = _arrays(train_set, "train", model)
    eval_arrays = _arrays(eval_set, "train (eval_set)", model) if eval_set is not None else None
    loss = loss or F.cross_entropy
    batch_size = int(min(batch_size, len(images)))
    done, history = 0, History()
    if resume is not None:
        opt, sched, seed, done, rng, history = _resume(resume, model, optimizer, schedule, batch_size, len(images),
                                                        epochs)
    else:
        opt = make_optimizer(optimizer)
        sched = make_schedule(schedule)
        if seed is None:
            from .nn.init import draw_seed
            seed = draw_seed()
        rng = np.random.default_rng(seed)
    if checkpoint is not None:
        from .checkpoint import save as save_checkpoint
        if checkpoint_extra is not None and not isinstance(checkpoint_extra, dict):
            raise TypeError(f"train: checkpoint_extra must be a dict, got {type(checkpoint_extra).__name__}")

    with runtime._EvalMode(model, training=True):
        t = runtime.traced(model, images.shape[1:], batch_size, loss)
        ex = runtime.build_executor(model, t, capacity=batch_size, device=dev, optimizer=opt, conv_algo=conv_algo,
                                    seed=seed)
    train_data = eval_data = None
    if dev[0] == "cuda":  # the datasets go to the device once; epochs gather batches there
        ex.upload_state()
        train_data = ex.upload(images, labels)
        eval_data = ex.upload(*eval_arrays) if eval_arrays is not None else None
    steps_per_epoch = -(-len(images) // batch_size)
    iteration = ex.optimizer_steps
    shown = _Progress(bool(progress), epochs, done, len(images))  # bars or lines; closed however the run ends
    try:
        for epoch in range(done + 1, epochs + 1):
            sched_spec = sched.epoch_spec(epoch - 1, iteration, steps_per_epoch, epochs)  # before the shuffle draw
            order = rng.permutation(len(images)).astype(np.int64)
            lr = float(sched.lr_at(opt.lr, iteration, steps_per_epoch, epochs))
            on_steps = shown.start(epoch)
            t0 = time.perf_counter()
            snapshot = _Snapshot(model, opt)
            try:
                if dev[0] == "cpu":
                    stats, iteration = ex.train_epoch(images, labels, order, batch_size, sched_spec, iteration,
                                                      on_steps, max(1, steps_per_epoch // 100))
                else:
                    stats, iteration = ex.train_epoch_device(train_data, order, batch_size, sched_spec, iteration,
                                                             on_steps, max(1, steps_per_epoch // 100))
            except BaseException:
                # Only a finished epoch reaches the model: after a divergence, an error or Ctrl-C
                # inside an epoch, the model and the optimizer are back at the end of the last one.
                snapshot.restore()
                ex.optimizer_steps = opt.state["steps"]
                raise
            opt.state["steps"] = int(ex.optimizer_steps)
            if dev[0] == "cuda":
                ex.download_state()
            if not snapshot.finite():  # the epoch's last update, which no later output could reveal
                snapshot.restore()
                ex.optimizer_steps = opt.state["steps"]
                if dev[0] == "cuda":
                    ex.upload_state()
                raise RuntimeError(f"training diverged in epoch {epoch}: its last update left parameters that are NaN "
                                   "or inf; the model is back at the end of the previous epoch. Try a smaller "
                                   "learning rate")
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "loss": stats["loss_sum"] / stats["samples"],
                      "train_accuracy": stats["correct"] / stats["samples"], "seconds": seconds,
                      "samples_per_sec": stats["samples"] / seconds, "lr": lr}
            if eval_arrays is not None:
                ev = _evaluate_epoch(model, eval_arrays, eval_data, images.shape[1:], device, dev)
                record["eval_loss"] = ev["loss_sum"] / ev["samples"]
                record["eval_accuracy"] = ev["correct"] / ev["samples"]
            history.append(record)
            shown.end(record)
            stop = on_epoch is not None and on_epoch(record) is False
            if stop:
                history.stopped_early = True
            if checkpoint is not None:  # after on_epoch: the file holds the epoch as the user saw it
                state = _training_state(epoch, epochs, batch_size, len(images), seed, rng, sched)
                save_checkpoint(model, checkpoint, optimizer=opt,
                                extra={**(checkpoint_extra or {}), "history": history.to_dict(), "train_state": state})
            if stop:
                break
    finally:
        shown.close()
    return history


def evaluate(model, dataset, batch_size=256, device="cpu", loss=None):
    """{"accuracy": float in [0, 1], "loss": mean loss} of the model on a dataset, in
    evaluation mode (the model's own mode is left as it was). loss: F.cross_entropy (default;
    for a model that outputs log-probabilities it equals their NLL)."""
    from . import functional as F
    from . import runtime
    images, labels = _arrays(dataset, "evaluate", model)
    shape = getattr(model, "input_shape", None)
    if shape and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"evaluate: images of shape {images.shape} do not match the model input {tuple(shape)}")
    runtime._positive_int(batch_size, "batch_size", "evaluate")
    ev = runtime.evaluate_arrays(model, images, labels, batch_size, device, loss or F.cross_entropy)
    return {"accuracy": ev["correct"] / ev["samples"], "loss": ev["loss_sum"] / ev["samples"]}
