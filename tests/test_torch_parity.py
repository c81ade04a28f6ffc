"""Golden tests against PyTorch (CPU, float64 as the oracle).

pylenet's models are PyTorch ``nn.Sequential`` twins with PyTorch's parameter names and
layouts, and its optimizers / schedules follow ``torch.optim``. Here the twin gets
pylenet's ``state_dict``; forward outputs, a few training steps with each optimizer
(full batch, so shuffling does not matter), multi-step epochs with pylenet's own seeded
shuffling replayed in torch, and the learning-rate schedules are compared.
"""
import math
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pylenet  # noqa: E402
from conftest import assert_close  # noqa: E402
from pylenet import models, optim  # noqa: E402

MODEL_NAMES = ["lenet5", "lenet5_classic", "cudnn_lenet"]


def data_root():
    env = os.environ.get("PYLENET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def batch():
    """64 MNIST test images (normalised) and labels, or random data if MNIST is absent."""
    root = data_root()
    if (root / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        ds = pylenet.datasets.mnist(root, train=False, download=False)
        return ds.images[:64].copy(), ds.labels[:64].copy()
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)


def torch_twin(model):
    """The float64 torch twin of a pylenet model, holding its weights."""
    from pylenet.bench import torch_twin as build
    return build(model, torch.float64)


def assert_same_weights(model, twin, rtol, what=""):
    tsd = twin.state_dict()
    sd = model.state_dict()
    assert list(sd) == list(tsd)
    for k, v in sd.items():
        assert_close(v, tsd[k].numpy(), rtol=rtol, atol=1e-7, what=f"{what} {k}")


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_matches_torch(name, batch):
    x, y = batch
    m = models.create(name, seed=3)
    twin = torch_twin(m)
    with torch.no_grad():
        logits = twin(torch.from_numpy(x).double())
        ref_probs = torch.softmax(logits, 1).numpy()
        ref_logp = torch.log_softmax(logits, 1).numpy()
        ref_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
    _, probs = m.predict(x, return_probs=True)
    assert_close(probs, ref_probs, rtol=1e-5, what="softmax")
    # Logits up to the per-row constant: log-probabilities.
    assert_close(np.log(probs).astype(np.float32), ref_logp, rtol=1e-5, atol=1e-5, what="log-softmax")
    ev = pylenet.evaluate(m, (x, y))
    assert ev["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert ev["accuracy"] == pytest.approx(float((ref_probs.argmax(1) == y).mean()))


def test_state_dict_round_trip_through_torch(batch):
    x, _ = batch
    m = models.lenet5(seed=11)
    twin = torch_twin(m).float()
    fresh = models.lenet5(seed=12)
    assert not np.array_equal(fresh.predict(x, return_probs=True)[1], m.predict(x, return_probs=True)[1])
    fresh.load_state_dict(twin.state_dict())  # torch tensors are accepted as they are
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
    np.testing.assert_array_equal(fresh.predict(x, return_probs=True)[1], m.predict(x, return_probs=True)[1])


# ----------------------------------------------------------------------------- training steps
OPTIMIZERS = {
    "sgd-nesterov-wd": (lambda: optim.SGD(0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    "sgd-momentum": (lambda: optim.SGD(0.05, momentum=0.8, weight_decay=1e-3),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, weight_decay=1e-3)),
    "sgd-plain": (lambda: optim.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "adam": (lambda: optim.Adam(1e-3, weight_decay=1e-4), lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4)),
    "adam-betas": (lambda: optim.Adam(2e-3, betas=(0.8, 0.99), eps=1e-6),
                   lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.8, 0.99), eps=1e-6)),
    "adadelta": (lambda: optim.Adadelta(1.0, weight_decay=1e-4),
                 lambda p: torch.optim.Adadelta(p, lr=1.0, weight_decay=1e-4)),
    "adadelta-rho": (lambda: optim.Adadelta(0.5, rho=0.95, eps=1e-5),
                     lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-5)),
}
CASES = [("lenet5", o) for o in OPTIMIZERS] + [("lenet5_classic", o) for o in ("sgd-nesterov-wd", "adam", "adadelta")] \
    + [("cudnn_lenet", o) for o in ("sgd-nesterov-wd", "adam-betas", "adadelta")]
# cudnn_lenet uses Adam with eps=1e-6: its fc1 has 400k weights with gradients ~1e-7, where
# float32 rounding alone moves m / (sqrt(v) + 1e-8) by O(1) (a 4e-4 relative difference).
# The steps run with conv_algo="im2col": its sums round like torch's, so on MNIST's constant
# background the convolution outputs tie exactly where torch's do, and max pooling routes the
# gradient to the same element. Winograd (cudnn_lenet's default conv2) rounds a constant patch
# differently across a tile: pooling then breaks those ties elsewhere, a different but equally
# valid subgradient (5e-3 of conv2's weight gradient on this batch); the next test checks it
# on data without ties.


@pytest.mark.parametrize("name,opt", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_training_steps_match_torch(name, opt, batch):
    K = 5
    x, y = batch
    m = models.create(name, seed=1)
    before = m.state_dict()
    twin = torch_twin(m)
    make_pl, make_torch = OPTIMIZERS[opt]
    topt = make_torch(twin.parameters())
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y)
    ref_losses = []
    for _ in range(K):
        loss = torch.nn.functional.cross_entropy(twin(X), Y)
        ref_losses.append(loss.item())
        topt.zero_grad()
        loss.backward()
        topt.step()
    # Full batch: one step per epoch, the shuffled order only changes the summation order.
    opt_pl = make_pl()
    h = pylenet.train(m, (x, y), epochs=K, batch_size=len(x), optimizer=opt_pl, progress=False, conv_algo="im2col")
    assert len(h) == K
    np.testing.assert_allclose(h.loss, ref_losses, rtol=1e-5)
    assert_same_weights(m, twin, rtol=1e-4, what=f"{name}/{opt}")
    moved = max(np.abs(v - before[k]).max() for k, v in m.state_dict().items())
    assert moved > 1e-3  # the comparison is not vacuous
    assert opt_pl.state["steps"] == K


@pytest.mark.parametrize("name", ["cudnn_lenet", "mnist_net"])
def test_winograd_training_matches_torch(name):
    """The default (heuristic) algorithms, Winograd for cudnn_lenet's and mnist_net's second
    convolution, on random images (no ties for max pooling to break differently)."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    m = models.create(name, seed=1)
    twin = torch_twin(m)
    if name == "mnist_net":  # no dropout: torch's masks differ from ours
        m.eval()
        twin.eval()
    topt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y)
    ref = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(twin(X), Y)
        ref.append(loss.item())
        topt.zero_grad()
        loss.backward()
        topt.step()
    step = pylenet.compile(m, optimizer=optim.SGD(0.05, momentum=0.9, nesterov=True), batch_size=64)
    losses = [step(x, y) for _ in range(3)]
    assert "winograd" in step.executor(x.shape[1:]).conv_algorithms
    np.testing.assert_allclose(losses, ref, rtol=2e-5)
    assert_same_weights(m, twin, rtol=2e-4, what=f"{name} winograd")


def test_naive_conv_algo_matches_torch(batch):
    x, y = batch
    m = models.lenet5(seed=2)
    twin = torch_twin(m)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x).double()), torch.from_numpy(y))
        topt.zero_grad()
        loss.backward()
        topt.step()
    pylenet.train(m, (x, y), epochs=3, batch_size=len(x), optimizer=optim.SGD(0.05, momentum=0.9, nesterov=True),
                  progress=False, conv_algo="naive")
    assert_same_weights(m, twin, rtol=1e-4, what="naive")


@pytest.mark.parametrize("sched", ["cosine", "step", "inv"])
def test_shuffled_minibatch_epochs_match_torch(batch, sched):
    """60 samples, batch 16 (a partial last batch), 3 epochs; torch replays pylenet's
    documented shuffling (np.random.default_rng(seed).permutation per epoch) and schedule."""
    x, y = batch[0][:60], batch[1][:60]
    seed, epochs, bs = 5, 3, 16
    spe = math.ceil(len(x) / bs)
    m = models.lenet5(seed=4)
    twin = torch_twin(m)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    if sched == "cosine":
        pl_sched, tsched = optim.CosineLR(min_lr=0.01), torch.optim.lr_scheduler.CosineAnnealingLR(
            topt, T_max=spe * epochs, eta_min=0.01)
    elif sched == "step":  # torch's StepLR stepped per epoch == step_size * steps_per_epoch iterations
        pl_sched, tsched = optim.StepLR(step_size=1, gamma=0.5), torch.optim.lr_scheduler.StepLR(
            topt, step_size=spe, gamma=0.5)
    else:
        pl_sched = optim.InvLR(gamma=0.1, power=0.75)
        tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda it: (1 + 0.1 * it) ** -0.75)
    rng = np.random.default_rng(seed)
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y)
    ref_epoch_lr, ref_epoch_loss = [], []
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        ref_epoch_lr.append(topt.param_groups[0]["lr"])
        total = 0.0
        for s in range(spe):
            idx = order[s * bs:(s + 1) * bs]
            loss = torch.nn.functional.cross_entropy(twin(X[idx]), Y[idx])
            total += loss.item() * len(idx)
            topt.zero_grad()
            loss.backward()
            topt.step()
            tsched.step()
        ref_epoch_loss.append(total / len(x))
    h = pylenet.train(m, (x, y), epochs=epochs, batch_size=bs, seed=seed, progress=False, schedule=pl_sched,
                      optimizer=optim.SGD(0.1, momentum=0.9, weight_decay=1e-3, nesterov=True))
    np.testing.assert_allclose(h.lr, ref_epoch_lr, rtol=1e-9)
    np.testing.assert_allclose(h.loss, ref_epoch_loss, rtol=1e-5)
    assert_same_weights(m, twin, rtol=1e-4, what=sched)


# ----------------------------------------------------------------------------- schedules
def _torch_lrs(make_sched, iters, per_epoch=1):
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=0.1)
    s = make_sched(o)
    out = []
    for it in range(iters):
        out.append(o.param_groups[0]["lr"])
        o.step()
        if (it + 1) % per_epoch == 0:
            s.step()
    return np.array(out)


def test_step_schedule_matches_torch_steplr():
    spe, epochs = 7, 9
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.3), spe * epochs, spe)
    s = optim.StepLR(step_size=2, gamma=0.3)
    got = np.array([s.lr_at(0.1, it, spe, epochs) for it in range(spe * epochs)])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_cosine_schedule_matches_torch_cosineannealing():
    spe, epochs = 5, 4
    total = spe * epochs
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.002), total + 1)
    s = optim.CosineLR(min_lr=0.002)
    got = np.array([s.lr_at(0.1, it, spe, epochs) for it in range(total + 1)])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert got[-1] == pytest.approx(0.002)
    assert s.lr_at(0.1, 10 * total, spe, epochs) == pytest.approx(0.002)  # stays at min_lr after the run


def test_inv_and_constant_schedules():
    s = optim.InvLR(gamma=1e-4, power=0.75)
    for it in (0, 1, 10, 999, 10_000, 1_000_000):
        assert s.lr_at(0.01, it) == pytest.approx(0.01 * (1 + 1e-4 * it) ** -0.75, rel=1e-12)
    c = optim.ConstantLR()
    assert [c.lr_at(0.3, it, 10, 3) for it in (0, 5, 100)] == [0.3, 0.3, 0.3]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda it: (1 + 1e-4 * it) ** -0.75), 50)
    np.testing.assert_allclose([s.lr_at(0.1, it) for it in range(50)], ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["cudnn_lenet", "lenet5"])
@pytest.mark.parametrize("n", [100, 7])
def test_step_gradients_match_torch_for_any_chunking(name, n, batch):
    """One step's summed gradient, for a batch of three full chunks and a partial one (100)
    and for a batch inside one chunk (7): conv layers sum per-chunk gradients, Linear layers
    take one product over the whole batch (pylenet's two gradient paths)."""
    x0, y0 = batch
    x = np.concatenate([x0, 0.5 * x0])[:n].copy()
    y = np.concatenate([y0, y0[::-1]])[:n].copy()
    m = models.create(name, seed=3)
    twin = torch_twin(m)
    loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x).double()), torch.from_numpy(y))
    loss.backward()
    step = pylenet.compile(m, optimizer=optim.SGD(0.0), batch_size=n)
    assert step(x, y) == pytest.approx(loss.item(), rel=1e-5)
    grads = step.grads()
    assert list(grads) == [k for k, _ in twin.named_parameters()]
    for k, p in twin.named_parameters():
        assert_close(grads[k], p.grad.numpy(), rtol=1e-4, atol=1e-6, what=f"{name} d{k} (batch {n})")
