"""The random numbers of a model's initial weights, and PyTorch's default initialisation rules.

``pylenet.manual_seed(s)`` reseeds one global generator; every layer draws its initial
weights from it when it is built (as in PyTorch), so the same seed and the same model code
give the same weights. ``seeded(s)`` draws from a generator of its own for a block of code
(``models.lenet5(seed=0)`` uses it) without touching the global one. Dropout draws its key
from the same generator when a model is compiled.
"""
import contextlib
import math
import threading

import numpy as np

__all__ = ["manual_seed", "seeded", "generator", "kaiming_uniform_", "uniform_", "ones_", "zeros_"]

_state = threading.local()
_global = {"rng": np.random.default_rng(0)}


def manual_seed(seed):
    """Seeds the generator of initial weights and dropout (like ``torch.manual_seed``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: expected an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"manual_seed: the seed must be >= 0, got {seed}")
    _global["rng"] = np.random.default_rng(int(seed))


def generator():
    """The generator layers initialise from now: a ``seeded`` block's, else the global one."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _global["rng"]


@contextlib.contextmanager
def seeded(seed):
    """Initial weights drawn inside the block come from ``np.random.default_rng(seed)``."""
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(np.random.default_rng(seed))
    try:
        yield stack[-1]
    finally:
        stack.pop()


def draw_seed():
    """A 63-bit seed from the current generator (dropout keys of a compiled model)."""
    return int(generator().integers(0, 2 ** 63 - 1))


def uniform_(array, low, high, rng=None):
    array[...] = (rng or generator()).uniform(low, high, array.shape)
    return array


def kaiming_uniform_(weight, fan_in, rng=None):
    """PyTorch's default for Conv2d and Linear: kaiming_uniform_(a=sqrt(5)), which is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); their biases are drawn from the same range."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform_(weight, -bound, bound, rng)


def ones_(array):
    array[...] = 1
    return array


def zeros_(array):
    array[...] = 0
    return array
