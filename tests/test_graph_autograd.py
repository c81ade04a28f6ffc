"""Traced graphs, autodiff and the native executor against PyTorch float64 autograd.

Every model here is a ``pylenet.nn.Module`` written as a PyTorch user writes one; it is
traced into the native graph, differentiated, and run by ``pylenet.compile`` with SGD at
lr 0, so one step leaves the weights where they are and ``step.grads()`` holds that step's
gradients. Each model carries ``ref(P, B, x)``: the same computation in torch.nn.functional
on float64 copies of its parameters ``P`` and buffers ``B`` (PyTorch names), which autograd
differentiates. Batch sizes 7, 32 and 70 give one chunk, two chunks, and three chunks with a
partial last one (the CPU runtime splits a batch into chunks of 32 samples, a batch of up to
64 into two halves).

Also covered: dropout masks (statistics, scaling, keys per step / op / seed, thread-count
independence, eval mode), bit-identical training across thread counts, tracing errors
(module path and source line), frozen parameters and optimizers given a subset of them.
"""
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import pylenet  # noqa: E402
import pylenet.functional as F  # noqa: E402
import pylenet.nn as nn  # noqa: E402
from conftest import assert_close  # noqa: E402

BATCHES = [7, 32, 70]  # one chunk, two full chunks (16 + 16), three chunks (32 + 32 + 6)
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


# ----------------------------------------------------------------------------- helpers
def _t(a):
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(a.astype(np.float64))


def torch_reference(model, x, y, loss="ce", ref=None):
    """(loss, {name: grad}, {name: buffer after the forward}, output) of ``model.ref`` in float64."""
    ref = ref or model.ref
    params = {k: _t(p).requires_grad_(True) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    out = ref(params, buffers, _t(x))
    yt = _t(y)
    lv = TF.cross_entropy(out, yt) if loss == "ce" else TF.nll_loss(out, yt)
    lv.backward()
    grads = {k: (p.grad.numpy() if p.grad is not None else np.zeros(p.shape)) for k, p in params.items()}
    return lv.item(), grads, buffers, out.detach().numpy()


def lr0_step(model, x, y, loss=F.cross_entropy, seed=0, steps=1):
    """Runs `steps` native steps at lr 0; returns (last loss, {name: grad copy}). Asserts the
    parameters did not move."""
    before = model.state_dict()
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), loss=loss, batch_size=len(x), seed=seed)
    for _ in range(steps):
        lv = step(x, y)
    grads = {k: np.array(g, copy=True) for k, g in step.grads().items()}
    for k, p in model.named_parameters():
        assert np.array_equal(p, before[k]), f"{k} moved at lr 0"
    return lv, grads


def check_grads(model, x, y, loss="ce", forward=True, what=""):
    """One lr-0 step of the model against torch autograd: loss, gradient of every parameter
    and (forward=True, for models without batch-dependent layers) model(x)."""
    ref_loss, ref_grads, _, ref_out = torch_reference(model, x, y, loss)
    lv, grads = lr0_step(model, x, y, F.cross_entropy if loss == "ce" else F.nll_loss)
    assert lv == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), f"{what}: loss"
    assert sorted(grads) == sorted(ref_grads), what
    for k, g in grads.items():
        assert_close(g, ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{what} d{k}")
    if forward:
        assert_close(model(x), ref_out, rtol=1e-5, atol=1e-6, what=f"{what} forward")
    return grads


def data(rng, n, shape, classes):
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


# ----------------------------------------------------------------------------- the graphs
class Chain(nn.Module):
    """conv -> relu -> max pool -> flatten -> linear (relu before max pool: the runtime
    swaps the two, which must not change the gradients)."""
    input_shape, classes = (2, 10, 10), 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 6)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))

    @staticmethod
    def ref(P, B, x):
        x = TF.max_pool2d(TF.relu(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1)), 2)
        return TF.linear(x.flatten(1), P["fc.weight"], P["fc.bias"])


def sequential_chain():
    m = nn.Sequential(nn.Conv2d(1, 3, 3, stride=(1, 2), padding=(1, 0)), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
                      nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 2, 8), nn.ReLU(),
                      nn.Linear(8, 5))

    def ref(P, B, x):
        x = TF.relu(TF.conv2d(x, P["0.weight"], P["0.bias"], stride=(1, 2), padding=(1, 0)))
        x = TF.max_pool2d(x, 3, stride=2, padding=1)
        x = TF.relu(TF.conv2d(x, P["3.weight"], P["3.bias"])).flatten(1)
        x = TF.relu(TF.linear(x, P["6.weight"], P["6.bias"]))
        return TF.linear(x, P["8.weight"], P["8.bias"])

    m.ref, m.input_shape, m.classes = ref, (1, 9, 12), 5
    return m


class Smooth(nn.Module):
    """Strided conv -> tanh -> avg pool (kernel 3, stride 2, padding 1) -> linear -> sigmoid -> linear."""
    input_shape, classes = (1, 13, 13), 5

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(3 * 3 * 3, 10)
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        x = self.pool(F.tanh(self.conv(x)))
        return self.fc2(F.sigmoid(self.fc1(F.flatten(x, 1))))

    @staticmethod
    def ref(P, B, x):
        x = TF.avg_pool2d(torch.tanh(TF.conv2d(x, P["conv.weight"], P["conv.bias"], stride=2)), 3, stride=2, padding=1)
        return TF.linear(torch.sigmoid(TF.linear(x.flatten(1), P["fc1.weight"], P["fc1.bias"])), P["fc2.weight"],
                         P["fc2.bias"])


class AvgPoolOdd(nn.Module):
    """Average pooling with stride != kernel and padding, on (h, w) pairs, then avg pool
    with stride > kernel (gaps the backward must leave at zero)."""
    input_shape, classes = (2, 11, 9), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        x = F.avg_pool2d(self.conv(x), (3, 2), (2, 1), (1, 1))  # 11x9 -> 6x10
        x = F.avg_pool2d(x, 1, 3)                               # 6x10 -> 2x4: stride > kernel
        x = F.avg_pool2d(x, (1, 2), (1, 2))                     # 2x4 -> 2x2
        return self.fc(x.flatten(1))

    @staticmethod
    def ref(P, B, x):
        x = TF.avg_pool2d(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1), (3, 2), (2, 1), (1, 1))
        x = TF.avg_pool2d(x, 1, 3)
        x = TF.avg_pool2d(x, (1, 2), (1, 2))
        return TF.linear(x.flatten(1), P["fc.weight"], P["fc.bias"])


class Leaky(nn.Module):
    """conv -> leaky_relu -> max pool (kernel 3, stride 2, padding 1) -> linear -> LeakyReLU -> linear."""
    input_shape, classes = (1, 8, 8), 5

    def __init__(self, slope):
        super().__init__()
        self.slope = slope
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * 4, 12)
        self.act = nn.LeakyReLU(slope)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.conv(x), self.slope), 3, 2, 1)
        return self.fc2(self.act(self.fc1(x.flatten(1))))

    def ref(self, P, B, x):
        s = self.slope
        x = TF.max_pool2d(TF.leaky_relu(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1), s), 3, 2, 1)
        return TF.linear(TF.leaky_relu(TF.linear(x.flatten(1), P["fc1.weight"], P["fc1.bias"]), s), P["fc2.weight"],
                         P["fc2.bias"])


class Residual(nn.Module):
    """x + f(x) twice (the + operator and F.add), a value added to itself, then pooling."""
    input_shape, classes = (2, 8, 8), 5

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(h + self.conv2(h))
        h = F.add(h, F.sigmoid(h))
        h = h + h
        return self.fc(F.avg_pool2d(h, 2).flatten(1))

    @staticmethod
    def ref(P, B, x):
        h = TF.relu(TF.conv2d(x, P["conv1.weight"], P["conv1.bias"], padding=1))
        h = TF.relu(h + TF.conv2d(h, P["conv2.weight"], P["conv2.bias"], padding=1))
        h = h + torch.sigmoid(h)
        h = h + h
        return TF.linear(TF.avg_pool2d(h, 2).flatten(1), P["fc.weight"], P["fc.bias"])


class TwoBranches(nn.Module):
    """One value (a conv's output) feeds two branches (relu and tanh), each through its own
    linear, joined by an add (the tanh branch through a relu first)."""
    input_shape, classes = (1, 6, 6), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fa = nn.Linear(3 * 4 * 4, 4)
        self.fb = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        h = self.conv(x)
        a = F.relu(h).flatten(1)
        b = F.tanh(h).view(h.size(0), -1)
        return self.fa(a) + F.relu(self.fb(b))

    @staticmethod
    def ref(P, B, x):
        h = TF.conv2d(x, P["conv.weight"], P["conv.bias"])
        return (TF.linear(TF.relu(h).flatten(1), P["fa.weight"], P["fa.bias"])
                + TF.relu(TF.linear(torch.tanh(h).flatten(1), P["fb.weight"], P["fb.bias"])))


class LinearsAdded(nn.Module):
    """Two nn.Linear (with biases) whose outputs are added: both get the same output gradient."""
    input_shape, classes = (1, 6, 6), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fa = nn.Linear(3 * 4 * 4, 4)
        self.fb = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        h = self.conv(x)
        return self.fa(F.relu(h).flatten(1)) + self.fb(F.tanh(h).flatten(1))

    @staticmethod
    def ref(P, B, x):
        h = TF.conv2d(x, P["conv.weight"], P["conv.bias"])
        return (TF.linear(TF.relu(h).flatten(1), P["fa.weight"], P["fa.bias"])
                + TF.linear(torch.tanh(h).flatten(1), P["fb.weight"], P["fb.bias"]))


class SameLinearAdded(nn.Module):
    """One nn.Linear applied twice to the same input and added: fc(x) + fc(x) = 2 fc(x)."""
    input_shape, classes = (5,), 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x) + self.fc(x)

    @staticmethod
    def ref(P, B, x):
        return 2 * TF.linear(x, P["fc.weight"], P["fc.bias"])


class ConvsAdded(nn.Module):
    """Two convs (with biases) added: the same output gradient into two conv bias gradients."""
    input_shape, classes = (2, 5, 5), 4

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 5 * 5, 4, bias=False)

    def forward(self, x):
        return self.fc((self.a(x) + self.b(x)).flatten(1))

    @staticmethod
    def ref(P, B, x):
        h = TF.conv2d(x, P["a.weight"], P["a.bias"], padding=1) + TF.conv2d(x, P["b.weight"], P["b.bias"])
        return TF.linear(h.flatten(1), P["fc.weight"])


class SharedLinear(nn.Module):
    """The same nn.Linear applied twice: its gradients are the sum of both uses."""
    input_shape, classes = (6,), 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.fc(F.tanh(self.fc(x))))

    @staticmethod
    def ref(P, B, x):
        fc = lambda v: TF.linear(v, P["fc.weight"], P["fc.bias"])  # noqa: E731
        return TF.linear(fc(torch.tanh(fc(x))), P["head.weight"], P["head.bias"])


class SharedConv(nn.Module):
    """The same nn.Conv2d applied twice (and the same linear three times)."""
    input_shape, classes = (3, 6, 6), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, 3 * 6 * 6, bias=False)
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        h = self.conv(F.relu(self.conv(x))).flatten(1)
        h = self.fc(F.sigmoid(self.fc(h))) + self.fc(h)
        return self.head(h)

    @staticmethod
    def ref(P, B, x):
        conv = lambda v: TF.conv2d(v, P["conv.weight"], P["conv.bias"], padding=1)  # noqa: E731
        fc = lambda v: TF.linear(v, P["fc.weight"])  # noqa: E731
        h = conv(TF.relu(conv(x))).flatten(1)
        h = fc(torch.sigmoid(fc(h))) + fc(h)
        return TF.linear(h, P["head.weight"], P["head.bias"])


def shared_in_sequential():
    lin = nn.Linear(5, 5)
    m = nn.Sequential(lin, nn.Tanh(), lin, nn.ReLU(), nn.Linear(5, 3))

    def ref(P, B, x):
        x = torch.tanh(TF.linear(x, P["0.weight"], P["0.bias"]))
        x = TF.relu(TF.linear(x, P["0.weight"], P["0.bias"]))
        return TF.linear(x, P["4.weight"], P["4.bias"])

    m.ref, m.input_shape, m.classes = ref, (5,), 3
    return m


class CatChannels(nn.Module):
    """Two conv branches (3 and 5 channels) joined along the channels, plus the input itself
    (a part of the cat that needs no gradient)."""
    input_shape, classes = (2, 6, 6), 5

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 5, 1, bias=False)
        self.c = nn.Conv2d(10, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = pylenet.cat([F.relu(self.a(x)), x, F.tanh(self.b(x))], dim=1)
        return self.fc(F.relu(self.c(h)).flatten(1))

    @staticmethod
    def ref(P, B, x):
        a = TF.relu(TF.conv2d(x, P["a.weight"], P["a.bias"], padding=1))
        b = torch.tanh(TF.conv2d(x, P["b.weight"]))
        h = torch.cat([a, x, b], dim=1)
        return TF.linear(TF.relu(TF.conv2d(h, P["c.weight"], P["c.bias"])).flatten(1), P["fc.weight"], P["fc.bias"])


class CatFeatures(nn.Module):
    """cat along dim 1 of (N, F) features (dim=-1 is the same dim)."""
    input_shape, classes = (7,), 4

    def __init__(self):
        super().__init__()
        self.f1 = nn.Linear(7, 3)
        self.f2 = nn.Linear(7, 6)
        self.head = nn.Linear(9, 4)

    def forward(self, x):
        return self.head(F.cat([F.sigmoid(self.f1(x)), F.relu(self.f2(x))], dim=-1))

    @staticmethod
    def ref(P, B, x):
        h = torch.cat([torch.sigmoid(TF.linear(x, P["f1.weight"], P["f1.bias"])),
                       TF.relu(TF.linear(x, P["f2.weight"], P["f2.bias"]))], dim=1)
        return TF.linear(h, P["head.weight"], P["head.bias"])


class Views(nn.Module):
    """view to a new channel layout (4x6x6 -> 16x3x3) fed to a conv, reshape with -1, flatten."""
    input_shape, classes = (1, 8, 8), 5

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(16, 3, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(27, 9)
        self.fc2 = nn.Linear(9, 5)

    def forward(self, x):
        h = self.conv1(x).view(x.size(0), 16, 3, 3)
        h = F.relu(self.conv2(h)).reshape(x.shape[0], -1)
        h = self.fc1(h).view(-1, 3, 3)   # (N, 3, 3): a 3-D view in the middle
        return self.fc2(self.flat(F.tanh(h)))

    @staticmethod
    def ref(P, B, x):
        n = x.shape[0]
        h = TF.conv2d(x, P["conv1.weight"], P["conv1.bias"]).reshape(n, 16, 3, 3)
        h = TF.relu(TF.conv2d(h, P["conv2.weight"], P["conv2.bias"], padding=1)).reshape(n, -1)
        h = TF.linear(h, P["fc1.weight"], P["fc1.bias"]).reshape(n, 3, 3)
        return TF.linear(torch.tanh(h).flatten(1), P["fc2.weight"], P["fc2.bias"])


class LogSoftmaxNll(nn.Module):
    """log_softmax (functional and module) then nll_loss."""
    input_shape, classes = (6,), 5
    loss = "nll"

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        self.out = nn.LogSoftmax(dim=1)

    def forward(self, x):
        h = F.log_softmax(self.fc1(x), 1)
        return self.out(self.fc2(h))

    @staticmethod
    def ref(P, B, x):
        h = TF.log_softmax(TF.linear(x, P["fc1.weight"], P["fc1.bias"]), 1)
        return TF.log_softmax(TF.linear(h, P["fc2.weight"], P["fc2.bias"]), 1)


class SoftmaxChain(nn.Module):
    """softmax in the middle of a chain (functional and module), then cross-entropy."""
    input_shape, classes = (6,), 4

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 7)
        self.sm = nn.Softmax(dim=1)
        self.fc2 = nn.Linear(7, 5)
        self.fc3 = nn.Linear(5, 4)

    def forward(self, x):
        h = self.fc2(self.sm(self.fc1(x)))
        return self.fc3(F.softmax(h, dim=-1))

    @staticmethod
    def ref(P, B, x):
        h = TF.linear(torch.softmax(TF.linear(x, P["fc1.weight"], P["fc1.bias"]), 1), P["fc2.weight"], P["fc2.bias"])
        return TF.linear(torch.softmax(h, 1), P["fc3.weight"], P["fc3.bias"])


class NllOfScores(nn.Module):
    """nll_loss straight on linear scores (not log-probabilities): d/dscores = -onehot / N."""
    input_shape, classes = (4,), 3
    loss = "nll"

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)

    @staticmethod
    def ref(P, B, x):
        return TF.linear(x, P["fc.weight"], P["fc.bias"])


class Outputs(nn.Module):
    """Unusual outputs: the logits are a view of a conv output, or a relu, or a max pool
    (after a relu: the runtime's relu/max-pool swap on the output's producer)."""
    input_shape = (2, 6, 6)

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, stride=2)
        self.fc = nn.Linear(2 * 6 * 6, 6)
        self.classes = {"conv-view": 8, "relu": 6, "relu-maxpool": 18}[kind]

    def forward(self, x):
        h = F.tanh(self.conv(x))
        if self.kind == "conv-view":
            return self.conv2(h).flatten(1)           # (N, 2 * 2 * 2)
        if self.kind == "relu":
            return F.relu(self.fc(h.flatten(1)))
        return F.max_pool2d(F.relu(h), 2).view(x.size(0), -1)  # (N, 2 * 3 * 3)

    def ref(self, P, B, x):
        h = torch.tanh(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1))
        if self.kind == "conv-view":
            return TF.conv2d(h, P["conv2.weight"], P["conv2.bias"], stride=2).flatten(1)
        if self.kind == "relu":
            return TF.relu(TF.linear(h.flatten(1), P["fc.weight"], P["fc.bias"]))
        return TF.max_pool2d(TF.relu(h), 2).flatten(1)


class RawOps(nn.Module):
    """Parameters registered directly (nn.Parameter attributes) and used through the
    functional ops (conv2d with stride and padding, linear without bias) and the Tensor
    methods .relu(), .tanh(), .sigmoid(), .softmax(), .log_softmax(), .reshape()."""
    input_shape, classes = (2, 7, 7), 5
    loss = "nll"

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(4)
        self.w = nn.Parameter(0.3 * rng.standard_normal((3, 2, 3, 3)))
        self.b = nn.Parameter(0.1 * rng.standard_normal(3))
        self.w2 = nn.Parameter(0.2 * rng.standard_normal((6, 27)))
        self.w3 = nn.Parameter(0.3 * rng.standard_normal((5, 6)))
        self.b3 = nn.Parameter(0.1 * rng.standard_normal(5))

    def forward(self, x):
        h = F.conv2d(x, self.w, self.b, 2, 1).relu()          # 7x7 -> 4x4
        h = F.max_pool2d(h.tanh(), 2, 1)                        # 4x4 -> 3x3
        h = F.linear(h.reshape(x.size(0), 27), self.w2).sigmoid()
        h = h.softmax(1)
        return F.linear(h, self.w3, self.b3).log_softmax(1)

    @staticmethod
    def ref(P, B, x):
        h = TF.relu(TF.conv2d(x, P["w"], P["b"], stride=2, padding=1))
        h = TF.max_pool2d(torch.tanh(h), 2, 1)
        h = torch.sigmoid(TF.linear(h.reshape(x.shape[0], 27), P["w2"]))
        return TF.log_softmax(TF.linear(torch.softmax(h, 1), P["w3"], P["b3"]), 1)


GRAPHS = {
    "chain": Chain,
    "sequential-chain": sequential_chain,
    "tanh-sigmoid-avgpool": Smooth,
    "avgpool-stride-padding": AvgPoolOdd,
    "leaky-0.1": lambda: Leaky(0.1),
    "leaky-0": lambda: Leaky(0.0),
    "leaky-neg": lambda: Leaky(-0.5),
    "leaky-1.5": lambda: Leaky(1.5),
    "residual": Residual,
    "two-branches": TwoBranches,
    "linears-added": LinearsAdded,
    "same-linear-added": SameLinearAdded,
    "convs-added": ConvsAdded,
    "shared-linear": SharedLinear,
    "shared-conv": SharedConv,
    "shared-in-sequential": shared_in_sequential,
    "cat-channels": CatChannels,
    "cat-features": CatFeatures,
    "views": Views,
    "log-softmax-nll": LogSoftmaxNll,
    "softmax-chain": SoftmaxChain,
    "nll-of-scores": NllOfScores,
    "output-conv-view": lambda: Outputs("conv-view"),
    "output-relu": lambda: Outputs("relu"),
    "output-relu-maxpool": lambda: Outputs("relu-maxpool"),
    "raw-ops": RawOps,
}


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_gradients_match_torch(name, n, rng):
    model = GRAPHS[name]()
    x, y = data(rng, n, model.input_shape, model.classes)
    check_grads(model, x, y, loss=getattr(model, "loss", "ce"), what=f"{name} (batch {n})")


@pytest.mark.parametrize("name", ["chain", "shared-conv", "cat-channels", "views"])
def test_graph_gradients_batch_of_100_and_one(name, rng):
    """Four chunks (32+32+32+4), and a batch of one sample."""
    for n in (100, 1):
        model = GRAPHS[name]()
        x, y = data(rng, n, model.input_shape, model.classes)
        check_grads(model, x, y, loss=getattr(model, "loss", "ce"), what=f"{name} (batch {n})")


@pytest.mark.parametrize("name", ["chain", "shared-conv", "views", "softmax-chain"])
def test_batches_smaller_than_the_compiled_batch_size(name, rng):
    """A Step compiled for 100 samples, called with 70, 7, 100 and 33 samples: each step's
    gradients are that batch's (the stash and chunk buffers are sized for 100)."""
    model = GRAPHS[name]()
    loss = getattr(model, "loss", "ce")
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), batch_size=100,
                           loss=F.cross_entropy if loss == "ce" else F.nll_loss)
    for n in (70, 7, 100, 33):
        x, y = data(rng, n, model.input_shape, model.classes)
        ref_loss, ref_grads, _, _ = torch_reference(model, x, y, loss)
        assert step(x, y) == pytest.approx(ref_loss, rel=1e-5)
        for k, g in step.grads().items():
            assert_close(g, ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{name} batch {n} of 100: d{k}")
    with pytest.raises(ValueError, match="exceeds"):
        step(*data(rng, 101, model.input_shape, model.classes))


class TiedMaxPool(nn.Module):
    """A 2x2 conv with unit weights on small integers: many tied maxima in each pooling
    window, from different input patches, so the weight gradient shows where ties route
    (torch: the first maximum in the window, row-major)."""

    def __init__(self, relu, kernel, stride, padding):
        super().__init__()
        self.relu, self.pool = relu, (kernel, stride, padding)
        self.conv = nn.Conv2d(1, 1, 2)
        self.conv.weight[...] = 1
        self.conv.bias[...] = 0

    def forward(self, x):
        h = self.conv(x)
        if self.relu:
            h = F.relu(h)
        return F.max_pool2d(h, *self.pool).flatten(1)

    def ref(self, P, B, x):
        h = TF.conv2d(x, P["conv.weight"], P["conv.bias"])
        if self.relu:
            h = TF.relu(h)
        return TF.max_pool2d(h, *self.pool).flatten(1)


@pytest.mark.parametrize("relu", [False, True], ids=["no-relu", "relu"])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 1, 0), (3, 2, 1)], ids=str)
def test_max_pool_ties_route_like_torch(relu, pool, rng):
    model = TiedMaxPool(relu, *pool)
    x = rng.integers(-1, 2, (40, 1, 7, 7)).astype(np.float32)
    classes = model(x).shape[1]
    y = rng.integers(0, classes, 40)
    check_grads(model, x, y, what=f"ties relu={relu} pool={pool}")


def test_large_logits_are_stable(rng):
    """softmax / log_softmax / cross-entropy with logits in the hundreds."""
    for model in (SoftmaxChain(), LogSoftmaxNll(), Chain()):
        model.load_state_dict({k: 40 * v for k, v in model.state_dict().items()})
        x, y = data(rng, 70, model.input_shape, model.classes)
        check_grads(model, x, y, loss=getattr(model, "loss", "ce"), what=f"{type(model).__name__} x40")


def test_cat_of_the_same_value_twice(rng):
    class CatTwice(nn.Module):
        input_shape, classes = (2, 5, 5), 3

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.mix = nn.Conv2d(8, 2, 1)
            self.fc = nn.Linear(50, 3)

        def forward(self, x):
            h = F.tanh(self.conv(x))
            return self.fc(self.mix(pylenet.cat([h, x, h], 1)).flatten(1))

        @staticmethod
        def ref(P, B, x):
            h = torch.tanh(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1))
            h = TF.conv2d(torch.cat([h, x, h], 1), P["mix.weight"], P["mix.bias"])
            return TF.linear(h.flatten(1), P["fc.weight"], P["fc.bias"])

    for n in (7, 70):
        model = CatTwice()
        check_grads(model, *data(rng, n, model.input_shape, model.classes), what=f"cat twice (batch {n})")


@pytest.mark.parametrize("n", [5, 70])
def test_linear_biases_sharing_one_output_gradient(n, rng):
    """Minimal form of the bias bug, without torch: in fa(x) + fb(x) both biases get the
    same gradient, the column sums of d loss / d output; in fc(x) + fc(x) twice that."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fa = nn.Linear(4, 3)
            self.fb = nn.Linear(4, 3)

        def forward(self, x):
            return self.fa(x) + self.fb(x)

    x, y = data(rng, n, (4,), 3)
    _, g = lr0_step(TwoHeads(), x, y)
    assert np.abs(g["fa.bias"]).max() > 1e-3
    assert_close(g["fb.bias"], g["fa.bias"], rtol=1e-6, atol=1e-7, what="fb.bias vs fa.bias")


def test_shared_linear_gradient_is_the_sum_of_both_uses(rng):
    """A check of the sum itself, independent of torch: dW of the shared layer equals the
    sum of the gradients of two separate (identical) copies."""
    shared = SharedLinear()

    class Unshared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.fc_again = nn.Linear(6, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.fc_again(F.tanh(self.fc(x))))

    two = Unshared()
    sd = shared.state_dict()
    two.load_state_dict({"fc.weight": sd["fc.weight"], "fc.bias": sd["fc.bias"], "fc_again.weight": sd["fc.weight"],
                         "fc_again.bias": sd["fc.bias"], "head.weight": sd["head.weight"], "head.bias": sd["head.bias"]})
    x, y = data(rng, 70, (6,), 3)
    l1, g1 = lr0_step(shared, x, y)
    l2, g2 = lr0_step(two, x, y)
    assert l1 == pytest.approx(l2, rel=1e-6)
    for k in ("weight", "bias"):
        assert_close(g1[f"fc.{k}"], g2[f"fc.{k}"] + g2[f"fc_again.{k}"], rtol=1e-5, atol=1e-7, what=f"fc.{k}")


def test_custom_loss_function_of_graph_ops(rng):
    """loss = a function of (output, labels) made of graph ops: nll_loss(log_softmax(out))."""
    model = Chain()
    x, y = data(rng, 70, model.input_shape, model.classes)
    ref_loss, ref_grads, _, _ = torch_reference(model, x, y)
    lv, grads = lr0_step(model, x, y, loss=lambda out, lab: F.nll_loss(F.log_softmax(out, 1), lab))
    assert lv == pytest.approx(ref_loss, rel=1e-5)
    for k, g in grads.items():
        assert_close(g, ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{k}")


# ----------------------------------------------------------------------------- batch norm
class BNNet(nn.Module):
    """conv -> BatchNorm2d -> relu -> linear -> BatchNorm1d -> tanh -> linear."""
    input_shape, classes = (2, 6, 6), 5

    def __init__(self, momentum=0.1, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn2 = nn.BatchNorm2d(3, momentum=momentum, affine=affine)
        self.fc1 = nn.Linear(3 * 4 * 4, 8)
        self.bn1 = nn.BatchNorm1d(8, momentum=momentum, affine=affine, eps=1e-3)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.bn2(self.conv(x)))
        return self.fc2(F.tanh(self.bn1(self.fc1(h.flatten(1)))))

    def ref(self, P, B, x, training=True):
        h = TF.conv2d(x, P["conv.weight"], P["conv.bias"])
        h = TF.relu(_torch_bn(self.bn2, "bn2", P, B, h, training))
        h = TF.linear(h.flatten(1), P["fc1.weight"], P["fc1.bias"])
        h = torch.tanh(_torch_bn(self.bn1, "bn1", P, B, h, training))
        return TF.linear(h, P["fc2.weight"], P["fc2.bias"])


class BN1d3D(nn.Module):
    """BatchNorm1d on (N, C, L) inputs (a view of a conv's output), in the middle of a graph."""
    input_shape, classes = (1, 6, 6), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4 * 16, 4)

    def forward(self, x):
        h = self.conv(x)
        h = self.bn(h.view(h.size(0), 4, 16))
        return self.fc(F.relu(h).flatten(1))

    def ref(self, P, B, x, training=True):
        h = TF.conv2d(x, P["conv.weight"], P["conv.bias"])
        h = _torch_bn(self.bn, "bn", P, B, h.reshape(h.shape[0], 4, 16), training)
        return TF.linear(TF.relu(h).flatten(1), P["fc.weight"], P["fc.bias"])


class BNShared(nn.Module):
    """One BatchNorm1d layer called twice (its running statistics updated twice, its counter
    by 2, as torch's module), and a BatchNorm1d producing the logits."""
    input_shape, classes = (6,), 5

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 5)
        self.head = nn.BatchNorm1d(5, momentum=0.3)

    def forward(self, x):
        h = F.tanh(self.bn(self.fc1(x)))
        h = F.relu(self.bn(self.fc2(h)))
        return self.head(self.fc3(h))

    def ref(self, P, B, x, training=True):
        h = torch.tanh(_torch_bn(self.bn, "bn", P, B, TF.linear(x, P["fc1.weight"], P["fc1.bias"]), training))
        h = TF.relu(_torch_bn(self.bn, "bn", P, B, TF.linear(h, P["fc2.weight"], P["fc2.bias"]), training))
        return _torch_bn(self.head, "head", P, B, TF.linear(h, P["fc3.weight"], P["fc3.bias"]), training)


class BNFunctional(nn.Module):
    """F.batch_norm on registered parameters and buffers (no counter), as a user writes it."""
    input_shape, classes = (3, 4, 4), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.gamma = nn.Parameter(np.linspace(0.5, 1.5, 3))
        self.beta = nn.Parameter(np.linspace(-0.2, 0.2, 3))
        self.register_buffer("mean", np.zeros(3, np.float32))
        self.register_buffer("var", np.ones(3, np.float32))
        self.fc = nn.Linear(48, 4)

    def forward(self, x):
        h = F.batch_norm(self.conv(x), self.mean, self.var, self.gamma, self.beta, training=self.training,
                         momentum=0.2, eps=1e-4)
        return self.fc(F.relu(h).flatten(1))

    def ref(self, P, B, x, training=True):
        h = TF.batch_norm(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1), B["mean"], B["var"],
                          P["gamma"], P["beta"], training=training, momentum=0.2, eps=1e-4)
        return TF.linear(TF.relu(h).flatten(1), P["fc.weight"], P["fc.bias"])


class BNResidual(nn.Module):
    """Values living across batch norms' whole-batch phases: a residual around a batch norm,
    two parallel batch norms, a linear's output used by a BatchNorm1d and a sigmoid."""
    input_shape, classes = (2, 5, 5), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))
        z = F.relu(self.bn_a(h)) + h
        z = z + self.bn_b(self.conv2(F.tanh(h)))
        f = self.fc(z.flatten(1))
        return self.fc2(F.relu(self.bn1(f)) + F.sigmoid(f))

    def ref(self, P, B, x, training=True):
        bn = lambda v, name: _torch_bn(getattr(self, name), name, P, B, v, training)  # noqa: E731
        h = TF.relu(TF.conv2d(x, P["conv.weight"], P["conv.bias"], padding=1))
        z = TF.relu(bn(h, "bn_a")) + h
        z = z + bn(TF.conv2d(torch.tanh(h), P["conv2.weight"], P["conv2.bias"], padding=1), "bn_b")
        f = TF.linear(z.flatten(1), P["fc.weight"], P["fc.bias"])
        return TF.linear(TF.relu(bn(f, "bn1")) + torch.sigmoid(f), P["fc2.weight"], P["fc2.bias"])


class BNFirst(nn.Module):
    """Batch norm on the model's input (no input gradient is needed) and on the logits."""
    input_shape, classes = (2, 4, 4), 3

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.bn1 = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn1(self.fc(F.relu(self.bn(x)).flatten(1)))

    def ref(self, P, B, x, training=True):
        h = TF.relu(_torch_bn(self.bn, "bn", P, B, x, training)).flatten(1)
        return _torch_bn(self.bn1, "bn1", P, B, TF.linear(h, P["fc.weight"], P["fc.bias"]), training)


def _torch_bn(layer, name, P, B, x, training):
    """torch's BatchNorm module semantics on float64 copies, updating B (incl. num_batches_tracked)."""
    w, b = P.get(f"{name}.weight"), P.get(f"{name}.bias")
    rm, rv, nbt = B[f"{name}.running_mean"], B[f"{name}.running_var"], B[f"{name}.num_batches_tracked"]
    momentum = layer.momentum
    if training:
        nbt.add_(1)
        momentum = 1.0 / float(nbt) if momentum is None else momentum
    return TF.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum if momentum is not None else 0.0,
                         eps=layer.eps)


def _check_buffers(model, ref_buffers, what):
    for k, b in model.named_buffers():
        if k.endswith("num_batches_tracked"):
            assert b.dtype == np.int64 and int(b) == int(ref_buffers[k]), f"{what} {k}: {int(b)} != {int(ref_buffers[k])}"
        else:
            assert_close(b, ref_buffers[k].numpy(), rtol=1e-5, atol=1e-6, what=f"{what} {k}")


BN_MODELS = {
    "bn-momentum-0.1": lambda: BNNet(),
    "bn-momentum-None": lambda: BNNet(momentum=None),
    "bn-momentum-0.7-no-affine": lambda: BNNet(momentum=0.7, affine=False),
    "bn1d-3d": BN1d3D,
    "bn-shared-and-logits": BNShared,
    "bn-functional": BNFunctional,
    "bn-residual": BNResidual,
    "bn-first": BNFirst,
}


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(BN_MODELS))
def test_batch_norm_training_gradients_and_running_stats(name, n, rng):
    """Whole-batch statistics (whatever the chunking), their gradients, and the running
    statistics and counter after two steps (on two different batches), as torch's modules."""
    model = BN_MODELS[name]()
    x1, y1 = data(rng, n, model.input_shape, model.classes)
    x2, y2 = data(rng, n, model.input_shape, model.classes)
    x2 = 2.0 * x2 + 0.5  # other statistics
    params = {k: _t(p).requires_grad_(True) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    with torch.no_grad():
        model.ref(params, buffers, _t(x1))
    out = model.ref(params, buffers, _t(x2))
    ref_loss = TF.cross_entropy(out, _t(y2))
    ref_loss.backward()

    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), batch_size=n)
    step(x1, y1)
    lv = step(x2, y2)
    assert lv == pytest.approx(ref_loss.item(), rel=1e-5)
    grads = step.grads()
    for k, p in params.items():
        assert_close(grads[k], p.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{name} (batch {n}) d{k}")
    _check_buffers(model, buffers, f"{name} (batch {n})")


def test_batch_norm_statistics_do_not_depend_on_chunking(rng):
    """The same 70 samples as one batch: forward outputs of the first 7 and the running
    statistics must use all 70 (a chunk-local mean would differ)."""
    model = BNNet()
    x, y = data(rng, 70, model.input_shape, model.classes)
    x[32:] += 3.0  # chunks 2 and 3 with other statistics than chunk 1
    params = {k: _t(p) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    with torch.no_grad():
        ref = model.ref(params, buffers, _t(x)).numpy()
    out = model(x)  # training mode: batch statistics of the whole call, updates the running ones
    assert_close(out, ref, rtol=1e-5, atol=1e-6, what="forward in training mode")
    _check_buffers(model, buffers, "model(x) in training mode")


@pytest.mark.parametrize("n", [7, 70])
@pytest.mark.parametrize("name", ["bn-momentum-0.1", "bn1d-3d"])
def test_batch_norm_eval_mode_gradients(name, n, rng):
    """In eval mode batch norm is an affine map with the running statistics; the step's
    gradients go through it and the statistics and counter stay unchanged."""
    model = BN_MODELS[name]()
    state = model.state_dict()
    for k, v in state.items():  # non-trivial running statistics and affine parameters
        if k.endswith("running_mean") or k.endswith(".bias"):
            state[k] = rng.standard_normal(v.shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.3, 3.0, v.shape).astype(np.float32)
        elif k.endswith("num_batches_tracked"):
            state[k] = np.array(5, np.int64)
        elif k.startswith("bn") and k.endswith("weight"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    model.load_state_dict(state)
    model.eval()
    x, y = data(rng, n, model.input_shape, model.classes)
    ref_loss, ref_grads, ref_buffers, ref_out = torch_reference(
        model, x, y, ref=lambda P, B, v: model.ref(P, B, v, training=False))
    lv, grads = lr0_step(model, x, y)
    assert lv == pytest.approx(ref_loss, rel=1e-5)
    for k, g in grads.items():
        assert_close(g, ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"{name} eval (batch {n}) d{k}")
    for k, b in model.named_buffers():
        assert np.array_equal(b, state[k]), f"{k} changed in eval mode"
    assert_close(model(x), ref_out, rtol=1e-5, atol=1e-6, what="eval forward")
    assert model.training is False


def test_one_step_switches_between_train_and_eval(rng):
    """A Step re-traces when the model's mode changes: batch statistics (and updates) in
    training mode, the running ones (and no update) in eval mode, and back."""
    model = BNNet()
    x, y = data(rng, 40, model.input_shape, model.classes)
    params = {k: _t(p) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), batch_size=40)
    step(x, y)
    with torch.no_grad():
        model.ref(params, buffers, _t(x))
    _check_buffers(model, buffers, "after a training step")
    model.eval()
    P = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = TF.cross_entropy(model.ref(P, buffers, _t(x), training=False), _t(y))
    ref.backward()
    assert step(x, y) == pytest.approx(ref.item(), rel=1e-5)
    for k, g in step.grads().items():
        assert_close(g, P[k].grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"eval d{k}")
    _check_buffers(model, buffers, "after an eval step")
    model.train()
    step(x, y)
    with torch.no_grad():
        model.ref(params, buffers, _t(x))
    _check_buffers(model, buffers, "after a second training step")


@pytest.mark.parametrize("frozen", [["bn.weight"], ["bn.bias"], ["bn1.weight", "fc.bias"]])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_with_some_parameters_frozen(frozen, training, rng):
    model = BNFirst()
    state = model.state_dict()
    state["bn.running_mean"] = rng.standard_normal(2).astype(np.float32)
    state["bn.running_var"] = rng.uniform(0.5, 2, 2).astype(np.float32)
    state["bn.weight"] = rng.uniform(0.5, 2, 2).astype(np.float32)
    state["bn.bias"] = rng.standard_normal(2).astype(np.float32)
    model.load_state_dict(state)
    for k, p in model.named_parameters():
        p.requires_grad = k not in frozen
    model.train(training)
    x, y = data(rng, 70, model.input_shape, model.classes)
    params = {k: _t(p).requires_grad_(k not in frozen) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    ref = TF.cross_entropy(model.ref(params, buffers, _t(x), training=training), _t(y))
    ref.backward()
    before = model.state_dict()
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.3), batch_size=70)
    assert step(x, y) == pytest.approx(ref.item(), rel=1e-5)
    after = model.state_dict()
    for k, p in params.items():
        if k in frozen:
            assert np.array_equal(after[k], before[k]), k
        else:
            assert_close(after[k], before[k] - 0.3 * p.grad.numpy(), rtol=1e-5, atol=1e-6, what=k)
    _check_buffers(model, buffers, f"frozen {frozen}")


# ----------------------------------------------------------------------------- dropout
class DropoutNet(nn.Module):
    input_shape, classes = (2, 6, 6), 5

    def __init__(self, p=0.0, with_dropout=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.drop2 = nn.Dropout(p) if with_dropout else nn.Identity()
        self.fc1 = nn.Linear(3 * 4 * 4, 10)
        self.p = p
        self.with_dropout = with_dropout
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        h = self.drop2(F.relu(self.conv(x))).flatten(1)
        h = F.tanh(self.fc1(h))
        if self.with_dropout:
            h = F.dropout(h, self.p, self.training)
        return self.fc2(h)

    @staticmethod
    def ref(P, B, x):
        h = TF.relu(TF.conv2d(x, P["conv.weight"], P["conv.bias"])).flatten(1)
        return TF.linear(torch.tanh(TF.linear(h, P["fc1.weight"], P["fc1.bias"])), P["fc2.weight"], P["fc2.bias"])


@pytest.mark.parametrize("n", BATCHES)
def test_dropout_p0_is_exactly_no_dropout(n, rng):
    a, b = DropoutNet(0.0), DropoutNet(with_dropout=False)
    b.load_state_dict(a.state_dict())
    x, y = data(rng, n, a.input_shape, a.classes)
    la, ga = lr0_step(a, x, y)
    lb, gb = lr0_step(b, x, y)
    assert la == lb
    for k in ga:
        assert np.array_equal(ga[k], gb[k]), k
    assert np.array_equal(a(x), b(x))
    check_grads(a, x, y, what=f"dropout p=0 (batch {n})")


class MaskProbe(nn.Module):
    """Linear with zero weights and bias on one-hot inputs, then dropout, then cross-entropy.

    With x_i = e_i (one sample per row of the identity), logits are 0, so
    d loss / d logits[i, j] = (1/C - [j == y_i]) / N, and the dropout backward multiplies it
    by mask[i, j] * scale. Hence dW[j, i] = (1/C - [j == y_i]) * mask[i, j] * scale / N:
    the step's whole mask (N, C) is readable from fc.weight's gradient."""

    def __init__(self, n, c, p):
        super().__init__()
        self.fc = nn.Linear(n, c)
        self.fc.weight[...] = 0
        self.fc.bias[...] = 0
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return self.drop(self.fc(x))


def probe_masks(n, c, p, steps=1, seed=0, labels=None):
    """[(mask (N, C) bool, kept values * N / (1/C - onehot)) for each of `steps` steps]."""
    model = MaskProbe(n, c, p)
    x = np.eye(n, dtype=np.float32)
    y = np.arange(n) % c if labels is None else labels
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), batch_size=n, seed=seed)
    g = (1.0 / c - (np.arange(c)[None, :] == y[:, None])) / n  # (N, C)
    out = []
    for _ in range(steps):
        step(x, y)
        dw = step.grads()["fc.weight"].T.astype(np.float64)  # (N, C)
        mask = dw != 0
        out.append((mask, dw[mask] / g[mask]))
    return out


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_dropout_mask_statistics_and_scale_in_a_step(p):
    n, c = 70, 512  # 3 chunks, 35,840 elements
    (mask, scaled), = probe_masks(n, c, p)
    frac = 1.0 - mask.mean()
    sigma = np.sqrt(p * (1 - p) / mask.size)
    assert abs(frac - p) < 6 * sigma, f"fraction dropped {frac:.4f} for p={p}"
    np.testing.assert_allclose(scaled, 1.0 / (1.0 - p), rtol=1e-5)
    # Per-sample and per-chunk masks are not copies of each other (the element index is the
    # index in the whole batch, not in the chunk).
    assert not np.array_equal(mask[0], mask[1])
    assert not np.array_equal(mask[:6], mask[32:38])
    assert not np.array_equal(mask[:6], mask[64:70])
    # Per class (column) too: no column is constant.
    assert 0 < mask.mean(axis=0).min() and mask.mean(axis=0).max() < 1


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics_on_a_large_tensor(p):
    """model(x) in training mode on a 64 x 4096 tensor of ones: the fraction of zeros is p
    and kept values are exactly 1/(1-p)."""
    m = nn.Sequential(nn.Dropout(p))
    pylenet.manual_seed(3)
    out = m(np.ones((64, 4096), np.float32))
    zeros = out == 0
    frac = zeros.mean()
    sigma = np.sqrt(p * (1 - p) / out.size)
    assert abs(frac - p) < 6 * sigma, f"fraction of zeros {frac:.4f} for p={p}"
    np.testing.assert_allclose(out[~zeros], 1.0 / (1.0 - p), rtol=1e-6, atol=0)  # a few float32 ulps
    # rows (samples) and columns differ
    assert not np.array_equal(zeros[0], zeros[1]) and not np.array_equal(zeros[:, 0], zeros[:, 1])


def test_dropout_scale_is_accurate_for_large_p():
    p = 0.999
    pylenet.manual_seed(1)
    out = nn.Sequential(nn.Dropout(p))(np.ones((64, 4096), np.float32))
    kept = out[out != 0]
    assert kept.size > 0
    np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6, atol=0)


def test_dropout_p1_drops_everything():
    out = nn.Sequential(nn.Dropout(1.0))(np.ones((8, 100), np.float32))
    assert np.all(out == 0) and np.all(np.isfinite(out))


def test_dropout_masks_differ_between_steps_and_seeds():
    a = probe_masks(40, 64, 0.5, steps=3, seed=11)
    b = probe_masks(40, 64, 0.5, steps=3, seed=11)
    c = probe_masks(40, 64, 0.5, steps=1, seed=12)
    for (ma, _), (mb, _) in zip(a, b):
        assert np.array_equal(ma, mb)  # the same seed replays the same masks
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[1][0], a[2][0])
    assert not np.array_equal(a[0][0], c[0][0])


def test_dropout_masks_differ_between_ops_and_between_calls_of_one_layer():
    class TwoDrops(nn.Module):
        def __init__(self):
            super().__init__()
            self.d1 = nn.Dropout(0.5)
            self.d2 = nn.Dropout(0.5)

        def forward(self, x):
            return pylenet.cat([self.d1(x), self.d2(x), self.d1(x)], dim=1)

    out = TwoDrops()(np.ones((40, 300), np.float32))
    a, b, c = out[:, :300] == 0, out[:, 300:600] == 0, out[:, 600:] == 0
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)  # the same layer called twice draws two masks, as in PyTorch
    assert 0.4 < a.mean() < 0.6 and 0.4 < c.mean() < 0.6


def test_dropout_masks_identical_for_1_2_3_threads():
    previous = pylenet.get_num_threads()
    try:
        masks = {}
        for t in (1, 2, 3):
            pylenet.set_num_threads(t)
            masks[t] = probe_masks(100, 96, 0.4, steps=2, seed=5)
            # and the forward of a model(x) call with a fixed seed
            pylenet.manual_seed(9)
            masks[t].append((nn.Sequential(nn.Dropout(0.3))(np.ones((100, 200), np.float32)), None))
    finally:
        pylenet.set_num_threads(previous)
    for t in (2, 3):
        for (m1, _), (mt, _) in zip(masks[1], masks[t]):
            assert np.array_equal(m1, mt), f"mask with {t} threads differs from 1 thread"


def test_dropout_is_the_identity_in_eval_mode(rng):
    a, b = DropoutNet(0.5), DropoutNet(with_dropout=False)
    b.load_state_dict(a.state_dict())
    x, y = data(rng, 70, a.input_shape, a.classes)
    a.eval()
    b.eval()
    assert np.array_equal(a(x), b(x))
    la, ga = lr0_step(a, x, y)  # a step compiled in eval mode: no dropout in forward or backward
    lb, gb = lr0_step(b, x, y)
    assert la == lb
    for k in ga:
        assert np.array_equal(ga[k], gb[k]), k
    a.train()
    assert not np.array_equal(a(x), b(x))  # and in training mode it is active


def test_dropout_training_gradient_matches_torch_with_the_same_mask(rng):
    """Gradients through dropout p>0: torch replays pylenet's mask (read off a probe)."""
    n, c, p = 70, 9, 0.4
    (mask, _), = probe_masks(n, c, p, seed=21)

    # The same graph (MaskProbe), seed and step draw the same mask; now with non-zero weights.
    model = MaskProbe(n, c, p)
    model.fc.weight[...] = 0.3 * rng.standard_normal((c, n))
    model.fc.bias[...] = 0.3 * rng.standard_normal(c)
    x = np.eye(n, dtype=np.float32) + 0.1 * rng.standard_normal((n, n)).astype(np.float32)
    y = np.arange(n) % c
    P = {k: _t(v).requires_grad_(True) for k, v in model.named_parameters()}
    out = TF.linear(_t(x), P["fc.weight"], P["fc.bias"]) * torch.from_numpy(mask.astype(np.float64)) / (1 - p)
    ref = TF.cross_entropy(out, _t(y))
    ref.backward()
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.0), batch_size=n, seed=21)
    assert step(x, y) == pytest.approx(ref.item(), rel=1e-5)
    for k, v in step.grads().items():
        assert_close(v, P[k].grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"d{k}")


# ----------------------------------------------------------------------------- determinism
class BNDropNet(nn.Module):
    input_shape, classes = (1, 12, 12), 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(4 * 5 * 5, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        h = self.drop(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2))
        h = F.dropout(F.relu(self.bn1(self.fc1(h.flatten(1)))), 0.2, self.training)
        return self.fc2(h)


def test_training_is_bit_identical_for_1_2_3_threads(rng):
    x, y = data(rng, 150, BNDropNet.input_shape, BNDropNet.classes)
    init = BNDropNet().state_dict()
    previous = pylenet.get_num_threads()
    results = {}
    try:
        for t in (1, 2, 3, 2):
            pylenet.set_num_threads(t)
            m = BNDropNet()
            m.load_state_dict(init)
            opt = pylenet.optim.SGD(0.05, momentum=0.9)
            pylenet.train(m, (x, y), epochs=2, batch_size=40, optimizer=opt, seed=0, progress=False)
            sd = m.state_dict()
            if t in results:  # a second run with 2 threads: the same again
                for k in sd:
                    assert np.array_equal(sd[k], results[t][k]), f"rerun: {k}"
            results[t] = sd
    finally:
        pylenet.set_num_threads(previous)
    assert pylenet.get_num_threads() == previous
    for k, v in results[1].items():
        assert not np.array_equal(v, init[k]), f"{k} did not change in training"
        for t in (2, 3):
            assert np.array_equal(v, results[t][k]), f"{k}: {t} threads differ from 1 thread"
    assert int(results[1]["bn.num_batches_tracked"]) == 2 * 4
    # another seed gives other weights (the masks and the shuffle matter)
    m = BNDropNet()
    m.load_state_dict(init)
    pylenet.train(m, (x, y), epochs=2, batch_size=40, optimizer=pylenet.optim.SGD(0.05, momentum=0.9), seed=1,
                  progress=False)
    assert not np.array_equal(m.state_dict()["fc2.weight"], results[1]["fc2.weight"])


# ----------------------------------------------------------------------------- errors
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.fc1 = nn.Linear(400, 120)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc1(x.view(x.size(0), -1))  # 16 * 4 * 4 = 256 features, not 400


def _line_of(func, needle):
    lines, start = inspect.getsourcelines(func)
    for k, line in enumerate(lines):
        if needle in line:
            return start + k
    raise AssertionError(needle)


def test_trace_error_names_module_path_and_line():
    line = _line_of(LeNet.forward, "self.fc1(")
    expected = f"LeNet.fc1 (test_graph_autograd.py:{line}): Linear expects 400 input features, got 256"
    with pytest.raises(pylenet.TraceError) as e:
        LeNet()(np.zeros((2, 1, 12, 12), np.float32))
    assert str(e.value) == expected
    assert isinstance(e.value, ValueError) and issubclass(pylenet.TraceError, ValueError)
    # the same error when a training step traces it
    step = pylenet.compile(LeNet(), optimizer=pylenet.optim.SGD(0.0), batch_size=4)
    with pytest.raises(pylenet.TraceError) as e:
        step(np.zeros((4, 1, 12, 12), np.float32), np.zeros(4, np.int64))
    assert str(e.value) == expected


def test_trace_error_in_a_nested_module_names_the_full_path():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(10, 3)

        def forward(self, x):
            return self.proj(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Inner(), Inner()])

        def forward(self, x):
            return self.blocks[1](self.blocks[0](x))  # 3 features into a Linear(10, ...)

    line = _line_of(Inner.forward, "self.proj(")
    with pytest.raises(pylenet.TraceError) as e:
        Outer()(np.zeros((2, 10), np.float32))
    assert str(e.value) == \
        f"Outer.blocks.1.proj (test_graph_autograd.py:{line}): Linear expects 10 input features, got 3"


def test_add_of_mismatched_shapes_is_refused():
    class BadAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3)
            self.b = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return (self.a(x) + self.b(x)).flatten(1)

    line = _line_of(BadAdd.forward, "self.a(x) + self.b(x)")
    with pytest.raises(pylenet.TraceError) as e:
        BadAdd()(np.zeros((2, 1, 6, 6), np.float32))
    msg = str(e.value)
    assert msg.startswith(f"BadAdd (test_graph_autograd.py:{line}): ")
    assert "(N, 2, 4, 4)" in msg and "(N, 2, 6, 6)" in msg

    class AddConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) + 1.0

    with pytest.raises(pylenet.TraceError, match="both operands must be tensors"):
        AddConstant()(np.zeros((2, 3), np.float32))


def test_cat_along_dim_2_is_refused():
    class CatH(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return pylenet.cat([self.a(x), self.a(x)], dim=2).flatten(1)

    line = _line_of(CatH.forward, "pylenet.cat(")
    with pytest.raises(pylenet.TraceError) as e:
        CatH()(np.zeros((2, 1, 5, 5), np.float32))
    assert str(e.value).startswith(f"CatH (test_graph_autograd.py:{line}): ")
    assert "dim=1" in str(e.value)

    class CatMismatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.b = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return pylenet.cat([self.a(x), self.b(x)], dim=1).flatten(1)

    with pytest.raises(pylenet.TraceError, match="CatMismatch"):
        CatMismatch()(np.zeros((2, 1, 5, 5), np.float32))


@pytest.mark.parametrize("shape", [(-1,), (-1, 8), (1, -1), (4, 4, 2), (-1, 2, 2)])
def test_view_that_changes_the_batch_dimension_is_refused(shape):
    class BadView(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(x).view(*shape)

    with pytest.raises(pylenet.TraceError) as e:
        BadView()(np.zeros((2, 16), np.float32))
    line = _line_of(BadView.forward, ".view(*shape)")
    assert str(e.value).startswith(f"BadView (test_graph_autograd.py:{line}): view/reshape")
    assert "batch" in str(e.value)


def test_view_with_a_wrong_number_of_values_is_refused():
    class BadView(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(x).view(x.size(0), 5, -1)

    with pytest.raises(pylenet.TraceError, match="invalid"):
        BadView()(np.zeros((2, 16), np.float32))


@pytest.mark.parametrize("how", ["if", "while", "compare", "float", "iterate", "numpy", "item", "index"])
def test_data_dependent_control_flow_raises(how):
    class ValueDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            if how == "if":
                if y:
                    return y
            elif how == "while":
                while y:
                    break
            elif how == "compare":
                if y > 0:
                    return y
            elif how == "float":
                float(y)
            elif how == "iterate":
                for _ in y:
                    pass
            elif how == "numpy":
                np.asarray(y)
            elif how == "item":
                y.item()
            elif how == "index":
                return y[0]
            return y

    with pytest.raises(pylenet.TraceError) as e:
        ValueDependent()(np.zeros((3, 4), np.float32))
    assert str(e.value).startswith("ValueDependent (test_graph_autograd.py:")


# ----------------------------------------------------------------------------- frozen / subsets
class Small(nn.Module):
    input_shape, classes = (1, 6, 6), 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(3 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(F.relu(self.conv(x)).flatten(1))))

    @staticmethod
    def ref(P, B, x):
        h = TF.relu(TF.conv2d(x, P["conv.weight"], P["conv.bias"])).flatten(1)
        return TF.linear(TF.relu(TF.linear(h, P["fc1.weight"], P["fc1.bias"])), P["fc2.weight"], P["fc2.bias"])


def _sgd_expectation(model, x, y, lr, updated):
    """{name: expected value after one plain SGD step} with only `updated` names moving."""
    _, ref_grads, _, _ = torch_reference(model, x, y)
    before = model.state_dict()
    return {k: before[k] - lr * ref_grads[k] if k in updated else before[k] for k in before}


def _check_sgd(model, expected, frozen):
    for k, v in model.state_dict().items():
        if k in frozen:
            assert np.array_equal(v, expected[k]), f"{k} was updated"
        else:
            assert_close(v, expected[k], rtol=1e-5, atol=1e-6, what=k)


@pytest.mark.parametrize("frozen", [["fc1.weight"], ["conv.weight", "conv.bias"], ["fc2.bias", "conv.bias"]])
@pytest.mark.parametrize("n", [7, 70])
def test_requires_grad_false_is_not_updated(frozen, n, rng):
    model = Small()
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad = False
    assert {k for k, p in model.named_parameters() if not p.requires_grad} == set(frozen)
    x, y = data(rng, n, model.input_shape, model.classes)
    names = [k for k, _ in model.named_parameters()]
    expected = _sgd_expectation(model, x, y, 0.1, [k for k in names if k not in frozen])
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1), batch_size=n)
    step(x, y)
    _check_sgd(model, expected, frozen)


def test_requires_grad_false_with_weight_decay_and_momentum(rng):
    """A frozen parameter is not touched by weight decay or momentum either (two steps)."""
    model = Small()
    model.fc1.requires_grad_(False)
    before = model.state_dict()
    x, y = data(rng, 40, model.input_shape, model.classes)
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1, momentum=0.9, weight_decay=0.1), batch_size=40)
    step(x, y)
    step(x, y)
    after = model.state_dict()
    for k in ("fc1.weight", "fc1.bias"):
        assert np.array_equal(after[k], before[k]), k
    for k in ("conv.weight", "fc2.weight", "fc2.bias"):
        assert not np.array_equal(after[k], before[k]), k


def test_optimizer_given_a_subset_updates_only_those(rng):
    model = Small()
    x, y = data(rng, 70, model.input_shape, model.classes)
    expected = _sgd_expectation(model, x, y, 0.1, ["fc2.weight"])
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD([model.fc2.weight], lr=0.1), batch_size=70)
    step(x, y)
    _check_sgd(model, expected, [k for k in expected if k != "fc2.weight"])


def test_optimizer_subset_through_train_and_adam(rng):
    model = Small()
    before = model.state_dict()
    x, y = data(rng, 64, model.input_shape, model.classes)
    opt = pylenet.optim.Adam([model.conv.weight, model.fc1.bias], lr=0.01)
    pylenet.train(model, (x, y), epochs=1, batch_size=32, optimizer=opt, seed=0, progress=False)
    after = model.state_dict()
    for k in before:
        moved = not np.array_equal(after[k], before[k])
        assert moved == (k in ("conv.weight", "fc1.bias")), k


def test_optimizer_refuses_parameters_of_another_model():
    model, other = Small(), Small()
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD([other.fc2.weight], lr=0.1), batch_size=4)
    with pytest.raises(ValueError):
        step(np.zeros((4, 1, 6, 6), np.float32), np.zeros(4, np.int64))


def test_requires_grad_changed_after_the_first_step_takes_effect(rng):
    """Freezing a layer between steps of one compiled Step (fine-tuning as in PyTorch)."""
    model = Small()
    x, y = data(rng, 8, model.input_shape, model.classes)
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1), batch_size=8)
    step(x, y)
    model.fc1.weight.requires_grad = False
    frozen = model.fc1.weight.copy()
    step(x, y)
    assert np.array_equal(model.fc1.weight, frozen)


def test_freezing_then_compiling_a_new_step_takes_effect(rng):
    """The traced graph is cached on the model: a new Step after freezing must still see it."""
    model = Small()
    x, y = data(rng, 8, model.input_shape, model.classes)
    pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1), batch_size=8)(x, y)
    model.fc1.weight.requires_grad = False
    frozen = model.fc1.weight.copy()
    bias = model.fc1.bias.copy()
    pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1), batch_size=8)(x, y)
    assert np.array_equal(model.fc1.weight, frozen)
    assert not np.array_equal(model.fc1.bias, bias)
    # and unfreezing again
    model.fc1.weight.requires_grad = True
    pylenet.compile(model, optimizer=pylenet.optim.SGD(0.1), batch_size=8)(x, y)
    assert not np.array_equal(model.fc1.weight, frozen)


def test_frozen_batch_norm_affine_and_gradients_of_the_rest(rng):
    """Frozen BatchNorm weight/bias: not updated, and every other gradient still matches torch."""
    model = BNNet()
    model.bn2.requires_grad_(False)
    x, y = data(rng, 70, model.input_shape, model.classes)
    params = {k: _t(p).requires_grad_(p.requires_grad) for k, p in model.named_parameters()}
    buffers = {k: _t(b).clone() for k, b in model.named_buffers()}
    TF.cross_entropy(model.ref(params, buffers, _t(x)), _t(y)).backward()
    before = model.state_dict()
    step = pylenet.compile(model, optimizer=pylenet.optim.SGD(0.5), batch_size=70)
    step(x, y)
    after = model.state_dict()
    for k, p in params.items():
        if k.startswith("bn2."):
            assert np.array_equal(after[k], before[k]), k
        else:
            assert_close(after[k], before[k] - 0.5 * p.grad.numpy(), rtol=1e-5, atol=1e-6, what=k)
    _check_buffers(model, buffers, "frozen bn2")
