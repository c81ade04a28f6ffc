"""Optimizers and learning-rate schedules.

These are descriptions: the update rules run natively over the model's flat parameter
buffer, in one call per step (``csrc/ops/math.h`` holds the formulas, PyTorch's). Like
PyTorch's, an optimizer may be given the parameters it updates first
(``optim.SGD(model.parameters(), lr=0.1)``); without them it updates every parameter of the
model it trains (``optim.SGD(0.1)``). ``optimizer.state`` holds its buffers (flat, one value
per parameter of the model's buffer) and its step count, so training can resume.
"""
import math
import numbers

import numpy as np

__all__ = ["SGD", "Adam", "Adadelta", "Schedule", "ConstantLR", "StepLR", "CosineLR", "InvLR", "OneCycleLR",
           "LinearWarmup", "FunctionLR", "make_optimizer", "make_schedule"]


def _check(cond, msg):
    if not cond:
        raise ValueError(msg)


def _num(v, name, owner):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be a finite number, got {v!r}")
    return float(v)


def _split_params(owner, params, lr):
    """(parameters or None, lr) from PyTorch's (params, lr) or pylenet's (lr) first argument."""
    if params is None or isinstance(params, numbers.Real):
        if lr is not None and params is not None:
            raise TypeError(f"{owner}: lr given twice")
        return None, params if lr is None else lr
    if isinstance(params, np.ndarray) and not isinstance(params, _parameter_type()):
        raise TypeError(f"{owner}: expected an iterable of parameters (model.parameters()) or a learning rate, "
                        "got an array")
    items = [params] if isinstance(params, _parameter_type()) else list(params)
    if any(isinstance(p, dict) for p in items):
        raise ValueError(f"{owner}: parameter groups (dicts) are not supported; pass model.parameters() or a "
                         "list of parameters")
    for p in items:
        if not isinstance(p, _parameter_type()):
            raise TypeError(f"{owner}: expected parameters (nn.Parameter), got {type(p).__name__}")
    if not items:
        raise ValueError(f"{owner}: got an empty parameter list")
    return items, lr


def _parameter_type():
    from .nn.module import Parameter
    return Parameter


class Optimizer:
    kind = None
    n_buffers = 1

    def __init__(self, params=None):
        self.params = params  # the parameters it updates, or None: all of the model's
        self.state = {"buffers": None, "steps": 0}

    def spec(self):
        raise NotImplementedError

    def _resolve(self, model):
        """ids of the model's parameters this optimizer updates (None: all of them)."""
        if self.params is None:
            return None
        own = {id(p) for p in model.parameters()}
        foreign = [p for p in self.params if id(p) not in own]
        if foreign:
            raise ValueError(f"{type(self).__name__}: {len(foreign)} of its {len(self.params)} parameters are not "
                             f"parameters of this {type(model).__name__} (the optimizer was made for another model, "
                             "or the model's parameters were replaced after it was made)")
        return {id(p) for p in self.params}

    def _state_buffers(self, size):
        """The state buffers, made on first use: num_buffers flat float32 arrays of `size`."""
        bufs = self.state.get("buffers")
        if bufs is None:
            bufs = self.state["buffers"] = [np.zeros(size, np.float32) for _ in range(self.n_buffers)]
        if len(bufs) != self.n_buffers or any(b.shape != (size,) or b.dtype != np.float32 for b in bufs):
            raise ValueError(f"{type(self).__name__}: its saved state belongs to a model with "
                             f"{bufs[0].size if bufs else 0} parameters, this one has {size}; use a fresh "
                             "optimizer for a different model")
        for i, b in enumerate(bufs):
            if not (b.flags.c_contiguous and b.flags.writeable):
                bufs[i] = np.ascontiguousarray(b, dtype=np.float32).copy()
        return bufs

    def zero_grad(self, set_to_none=True):
        """Nothing to do: the runtime overwrites the gradients every step."""

    def config(self):
        """JSON-able description (stored in checkpoints)."""
        return self.spec()

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.spec().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """torch.optim.SGD: momentum, Nesterov momentum and L2 weight decay."""
    kind = "sgd"

    n_buffers = 1

    def __init__(self, params=None, lr=None, momentum=0.0, weight_decay=0.0, nesterov=False):
        params, lr = _split_params("SGD", params, lr)
        super().__init__(params)
        self.lr = _num(0.01 if lr is None else lr, "lr", "SGD")
        self.momentum = _num(momentum, "momentum", "SGD")
        self.weight_decay = _num(weight_decay, "weight_decay", "SGD")
        self.nesterov = bool(nesterov)
        _check(self.lr >= 0 and self.momentum >= 0 and self.weight_decay >= 0,
               "SGD: lr, momentum and weight_decay must be >= 0")
        _check(not self.nesterov or self.momentum > 0, "SGD: nesterov momentum requires momentum > 0")

    def spec(self):
        return {"kind": "sgd", "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay, no amsgrad)."""
    kind = "adam"

    n_buffers = 2

    def __init__(self, params=None, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        params, lr = _split_params("Adam", params, lr)
        super().__init__(params)
        self.lr = _num(1e-3 if lr is None else lr, "lr", "Adam")
        self.betas = (_num(betas[0], "beta1", "Adam"), _num(betas[1], "beta2", "Adam"))
        self.eps = _num(eps, "eps", "Adam")
        self.weight_decay = _num(weight_decay, "weight_decay", "Adam")
        _check(self.lr >= 0 and self.eps > 0 and self.weight_decay >= 0, "Adam: bad lr, eps or weight_decay")
        _check(all(0 <= b < 1 for b in self.betas), f"Adam: betas must be in [0, 1), got {self.betas}")

    def spec(self):
        return {"kind": "adam", "lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1],
                "eps": self.eps, "weight_decay": self.weight_decay}


class Adadelta(Optimizer):
    """torch.optim.Adadelta (the optimizer of PyTorch's MNIST example, lr=1.0)."""
    kind = "adadelta"

    n_buffers = 2

    def __init__(self, params=None, lr=None, rho=0.9, eps=1e-6, weight_decay=0.0):
        params, lr = _split_params("Adadelta", params, lr)
        super().__init__(params)
        self.lr = _num(1.0 if lr is None else lr, "lr", "Adadelta")
        self.rho = _num(rho, "rho", "Adadelta")
        self.eps = _num(eps, "eps", "Adadelta")
        self.weight_decay = _num(weight_decay, "weight_decay", "Adadelta")
        _check(self.lr >= 0 and 0 <= self.rho <= 1 and self.eps > 0 and self.weight_decay >= 0,
               "Adadelta: bad lr, rho, eps or weight_decay")

    def spec(self):
        return {"kind": "adadelta", "lr": self.lr, "rho": self.rho, "eps": self.eps,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adadelta": Adadelta}


def make_optimizer(name_or_opt=None, **kwargs):
    """An Optimizer from an instance, a name ("sgd", "adam", "adadelta") or a config dict."""
    if isinstance(name_or_opt, Optimizer):
        return name_or_opt
    if name_or_opt is None:
        name_or_opt = "sgd"
    if isinstance(name_or_opt, dict):
        cfg = dict(name_or_opt)
        kind = cfg.pop("kind")
        if kind == "adam":
            cfg["betas"] = (cfg.pop("beta1", 0.9), cfg.pop("beta2", 0.999))
        return OPTIMIZERS[kind](**cfg)
    if name_or_opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name_or_opt!r} (expected one of {sorted(OPTIMIZERS)})")
    return OPTIMIZERS[name_or_opt](**kwargs)


# ----------------------------------------------------------------------------- schedules
class Schedule:
    """Learning rate as a function of the iteration (optimizer step) count.

    A subclass defines ``spec(steps_per_epoch, epochs)``: a dict naming one of the native rules
    (see the subclasses below), which the runtime evaluates at every step. Any other rule is a
    plain function ``f(epoch, step) -> lr`` passed as the schedule (see FunctionLR)."""

    def spec(self, steps_per_epoch, epochs):
        raise TypeError(f"{type(self).__name__} is a Schedule without spec(steps_per_epoch, epochs); define it "
                        f"(a dict such as {{'kind': 'cosine', 'min_lr': 0.0, 'total_iters': ...}}, see "
                        "pylenet.optim.CosineLR), or pass a function f(epoch, step) -> lr as the schedule")

    def epoch_spec(self, epoch, first_iter, steps_per_epoch, epochs):
        """The native description of the rates of one epoch's steps (epoch counted from 0, its first
        step being iteration ``first_iter`` of the run). The fixed rules use one for all epochs."""
        spec = self.spec(steps_per_epoch, epochs)
        if not isinstance(spec, dict) or spec.get("kind") not in _NATIVE_RULES:
            raise TypeError(f"{type(self).__name__}.spec() returned {spec!r}: expected a dict whose 'kind' is one "
                            f"of {', '.join(_NATIVE_RULES)}")
        return spec

    def lr_at(self, base_lr, iteration, steps_per_epoch=1, epochs=1):
        from . import _C
        return _C.schedule_lr(self.epoch_spec(iteration // max(steps_per_epoch, 1), iteration, steps_per_epoch,
                                              epochs), float(base_lr), int(iteration))

    def config(self):
        return {"kind": getattr(self, "kind", type(self).__name__), **{k: v for k, v in vars(self).items()}}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NATIVE_RULES = ("constant", "step", "cosine", "inv", "one_cycle", "table")


class ConstantLR(Schedule):
    kind = "constant"

    def spec(self, steps_per_epoch, epochs):
        return {"kind": "constant"}


class StepLR(Schedule):
    """lr * gamma ** (epoch // step_size), as torch.optim.lr_scheduler.StepLR stepped per epoch."""
    kind = "step"

    def __init__(self, step_size=1, gamma=0.7):
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a whole number of epochs >= 1, got {step_size!r}")
        self.step_size, self.gamma = int(step_size), _num(gamma, "gamma", "StepLR")
        _check(self.gamma >= 0, f"StepLR: gamma must be >= 0, got {self.gamma}")

    def spec(self, steps_per_epoch, epochs):
        return {"kind": "step", "gamma": self.gamma, "step_iters": self.step_size * steps_per_epoch}


class CosineLR(Schedule):
    """Cosine decay from lr to min_lr over the whole run, per iteration."""
    kind = "cosine"

    def __init__(self, min_lr=0.0):
        self.min_lr = _num(min_lr, "min_lr", "CosineLR")
        _check(self.min_lr >= 0, f"CosineLR: min_lr must be >= 0, got {self.min_lr}")

    def spec(self, steps_per_epoch, epochs):
        return {"kind": "cosine", "min_lr": self.min_lr, "total_iters": max(1, steps_per_epoch * epochs)}


class InvLR(Schedule):
    """Caffe's "inv" policy, used by cudnn-training: lr * (1 + gamma * iter) ** -power."""
    kind = "inv"

    def __init__(self, gamma=1e-4, power=0.75):
        self.gamma, self.power = _num(gamma, "gamma", "InvLR"), _num(power, "power", "InvLR")
        # 1 + gamma * iter must stay > 0 for every iteration, or the rate is inf or NaN.
        _check(self.gamma >= 0, f"InvLR: gamma must be >= 0, got {self.gamma}")

    def spec(self, steps_per_epoch, epochs):
        return {"kind": "inv", "gamma": self.gamma, "power": self.power}


class OneCycleLR(Schedule):
    """PyTorch's OneCycleLR (two phases, cosine annealing, stepped per iteration) with the
    optimizer's lr as max_lr: from lr / div_factor up to lr over the first pct_start of the
    run, then down to lr / div_factor / final_div_factor at its last step."""
    kind = "one_cycle"

    def __init__(self, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
        self.pct_start = _num(pct_start, "pct_start", "OneCycleLR")
        self.div_factor = _num(div_factor, "div_factor", "OneCycleLR")
        self.final_div_factor = _num(final_div_factor, "final_div_factor", "OneCycleLR")
        _check(0 < self.pct_start < 1, f"OneCycleLR: pct_start must be in (0, 1), got {self.pct_start}")
        _check(self.div_factor > 0 and self.final_div_factor > 0,
               "OneCycleLR: div_factor and final_div_factor must be > 0")

    def spec(self, steps_per_epoch, epochs):
        return {"kind": "one_cycle", "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor, "total_iters": max(1, steps_per_epoch * epochs)}


class LinearWarmup(Schedule):
    """The first `steps` optimizer steps ramp linearly up to a schedule (``then``, default
    constant): step i (from 0) gets (i + 1) / steps of the rate ``then`` gives it."""
    kind = "warmup"

    def __init__(self, steps, then=None):
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"LinearWarmup: steps must be a whole number >= 1, got {steps!r}")
        self.steps = int(steps)
        self.then = make_schedule(then)
        if isinstance(self.then, (FunctionLR, LinearWarmup)):
            raise TypeError("LinearWarmup: `then` must be a built-in schedule (write a function's warm-up into "
                            "the function)")

    def spec(self, steps_per_epoch, epochs):
        return {**self.then.epoch_spec(0, 0, steps_per_epoch, epochs), "warmup_iters": self.steps}

    def config(self):
        return {"kind": "warmup", "steps": self.steps, "then": self.then.config()}

    def __repr__(self):
        return f"LinearWarmup(steps={self.steps}, then={self.then!r})"


class FunctionLR(Schedule):
    """Any function ``f(epoch, step) -> lr``: ``epoch`` counts finished epochs (from 0) and
    ``step`` the optimizer steps of the whole run (from 0, the clock of the other schedules).
    The value is the learning rate itself, not a factor of the optimizer's (unlike PyTorch's
    LambdaLR). It is called from Python for one epoch's steps at a time, ahead of that epoch,
    so the steps stay native; a rate that is not a finite number >= 0 stops training before
    the epoch starts. ``train(schedule=f)`` wraps a function in this class."""
    kind = "function"

    def __init__(self, fn):
        if not callable(fn) or isinstance(fn, Schedule):
            raise TypeError(f"FunctionLR: expected a function f(epoch, step) -> lr, got {type(fn).__name__}")
        self.fn = fn

    @property
    def name(self):
        return getattr(self.fn, "__qualname__", None) or type(self.fn).__name__

    def rate(self, epoch, step):
        lr = self.fn(epoch, step)
        if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, (numbers.Real, np.floating, np.integer)) or \
                not 0 <= float(lr) <= _FLOAT32_MAX:
            raise ValueError(f"schedule {self.name}: f(epoch={epoch}, step={step}) returned {lr!r}; a learning rate "
                             "must be a finite number >= 0 (in float32)")
        return float(lr)

    def spec(self, steps_per_epoch, epochs):
        raise TypeError("FunctionLR has no single native rule: its rates come one epoch at a time (epoch_spec)")

    def epoch_spec(self, epoch, first_iter, steps_per_epoch, epochs):
        return {"kind": "table", "first_iter": int(first_iter),
                "table": [self.rate(epoch, first_iter + i) for i in range(steps_per_epoch)]}

    def lr_at(self, base_lr, iteration, steps_per_epoch=1, epochs=1):
        return self.rate(iteration // max(steps_per_epoch, 1), iteration)

    def config(self):  # a function cannot be saved; its name lets a resume check it is given again
        return {"kind": "function", "function": self.name}

    def __repr__(self):
        return f"FunctionLR({self.name})"


SCHEDULES = {"constant": ConstantLR, "step": StepLR, "cosine": CosineLR, "inv": InvLR, "one_cycle": OneCycleLR,
             "warmup": LinearWarmup}


def make_schedule(name_or_sched=None, **kwargs):
    """A Schedule from an instance, a name, a config dict (of a built-in schedule) or a function
    f(epoch, step) -> lr."""
    if isinstance(name_or_sched, Schedule):
        if type(name_or_sched).spec is Schedule.spec and type(name_or_sched).epoch_spec is Schedule.epoch_spec:
            name_or_sched.spec(1, 1)  # raises the error that says what is missing
        return name_or_sched
    if name_or_sched is None:
        return ConstantLR()
    if isinstance(name_or_sched, type):
        raise TypeError(f"schedule: got the class {name_or_sched.__name__}, expected an instance "
                        f"(e.g. {name_or_sched.__name__}()) or a function f(epoch, step) -> lr")
    if isinstance(name_or_sched, dict):
        cfg = dict(name_or_sched)
        kind = cfg.pop("kind", None)
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {name_or_sched!r}: only the built-in schedules ({', '.join(SCHEDULES)}) "
                             "can be made from a config; pass a function or custom Schedule itself")
        return SCHEDULES[kind](**cfg)
    if callable(name_or_sched) and not isinstance(name_or_sched, str):
        return FunctionLR(name_or_sched)
    if not isinstance(name_or_sched, str):
        raise TypeError(f"schedule: expected a Schedule, a name, a config dict or a function f(epoch, step) -> lr, "
                        f"got {type(name_or_sched).__name__}")
    if name_or_sched not in SCHEDULES:
        raise ValueError(f"unknown schedule {name_or_sched!r} (expected one of {sorted(SCHEDULES)})")
    return SCHEDULES[name_or_sched](**kwargs)
