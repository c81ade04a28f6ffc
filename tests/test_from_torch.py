"""pylenet.from_torch: a torch.nn.Module in, a pylenet module out, with the same structure, names,
weights and outputs (torch, CPU, is the oracle).

The acceptance case is PyTorch's examples/mnist ``Net``, written here as PyTorch writes it:
imported, compared with torch, trained by pylenet on a few hundred MNIST images and exported
back into the torch Net. Then a residual / concat / batch-norm model of user classes, one small
module per supported op, gradients of a training step against torch's, checkpoints and pickles,
and the errors: unsupported ops listed all at once by name and line, forwards fx cannot trace,
and no torch at all.
"""
import inspect
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest

import pylenet
import pylenet.functional as PF
from conftest import assert_close
from pylenet import TraceError, optim

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the tests of from_torch without torch still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
HERE = os.path.basename(__file__)


def data_root():
    env = os.environ.get("PYLENET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist():
    """A few hundred MNIST images: 512 to train on, 256 to test (or random data without MNIST)."""
    root = data_root()
    if (root / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        ds = pylenet.datasets.mnist(root, train=False, download=False)
        x, y = ds.images[:768].copy(), ds.labels[:768].astype(np.int64)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((768, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 768)
    return (x[:512], y[:512]), (x[512:], y[512:])


def torch_out(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def line_of(func, text):
    """The source line in this file of the first line of `func` holding `text`."""
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, s in enumerate(lines) if text in s)


def tree(module):
    """(path, class name) of every module: torch's and pylenet's reprs differ in details (torch 2.13
    prints BatchNorm's bias=True), the trees must not."""
    return [(path, type(m).__name__) for path, m in module.named_modules()]


def assert_same_state(model, net, what=""):
    sd, tsd = model.state_dict(), net.state_dict()
    assert list(sd) == list(tsd), what
    for k, v in sd.items():
        assert v.dtype == (np.int64 if tsd[k].dtype == torch.int64 else np.float32), k
        np.testing.assert_array_equal(v, tsd[k].numpy(), err_msg=f"{what} {k}")


if torch is not None:
    class Net(nn.Module):  # PyTorch's examples/mnist/main.py, as it is written there
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            output = F.log_softmax(x, dim=1)
            return output

    class Block(nn.Module):
        """A residual block: conv, batch norm, + the input, ReLU."""

        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)) + x)

    class ResCat(nn.Module):
        """Residual blocks in a ModuleList, a concatenated branch, batch norm in 2-D and 1-D."""

        def __init__(self, p=0.3):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
            self.blocks = nn.ModuleList([Block(8), Block(8)])
            self.branch = nn.Conv2d(8, 4, 1)
            self.pool = nn.AvgPool2d(2)
            self.head = nn.Sequential(OrderedDict(
                fc=nn.Linear(12 * 7 * 7, 32), bn=nn.BatchNorm1d(32), act=nn.LeakyReLU(0.1), drop=nn.Dropout(p),
                out=nn.Linear(32, 10)))

        def forward(self, x):
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            x = torch.cat([x, torch.tanh(self.branch(x))], dim=1)
            x = self.pool(x)
            x = x.view(x.size(0), -1)
            return F.log_softmax(self.head(x), dim=1)

    class Ops(nn.Module):
        """forward is `fn(self, x)`; the keywords become submodules or parameters."""

        def __init__(self, fn, **members):
            super().__init__()
            self.fn = fn
            for k, v in members.items():
                setattr(self, k, v)

        def forward(self, x):
            return self.fn(self, x)

    def rescat_with_statistics(p=0.3):
        """A ResCat whose batch norms have seen some batches (running statistics that are not 0 and 1)."""
        torch.manual_seed(1)
        net = ResCat(p)
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(16, 1, 28, 28) * 2 + 0.5)
        return net.eval()


# ------------------------------------------------------------------------------ the mnist Net
@needs_torch
def test_mnist_net_imports_with_the_same_structure_weights_and_outputs(mnist):
    torch.manual_seed(0)
    net = Net().eval()
    model = pylenet.from_torch(net, (1, 28, 28))
    assert type(model).__name__ == "Net" and isinstance(model, pylenet.nn.Module)
    assert repr(model) == repr(net)  # the same layers, arguments and names, printed as PyTorch prints them
    assert_same_state(model, net)
    assert len({id(p._store) for p in model.parameters()}) == 1  # one flat buffer, as for a pylenet model
    assert model.input_shape == (1, 28, 28) and not model.training
    (x, _), _ = mnist
    out = model(x[:64])
    assert_close(out, torch_out(net, x[:64]), what="eval outputs")
    np.testing.assert_array_equal(model.predict(x[:64]), torch_out(net, x[:64]).argmax(1))


@needs_torch
def test_mnist_net_trains_in_pylenet_and_goes_back_into_torch(mnist):
    (x, y), (tx, ty) = mnist
    torch.manual_seed(0)
    model = pylenet.from_torch(Net(), (1, 28, 28))
    history = pylenet.train(model, (x, y), epochs=3, batch_size=64, optimizer=optim.Adadelta(1.0),
                            loss=PF.nll_loss, seed=0, progress=False)
    assert history.loss[-1] < 0.8 * history.loss[0], history.loss
    assert pylenet.evaluate(model, (tx, ty))["accuracy"] > 0.5
    back = Net()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})  # strict: key for key
    back.eval()
    model.eval()
    assert_close(model(tx), torch_out(back, tx), what="trained model, exported to torch")


@needs_torch
def test_a_training_step_has_torch_gradients(mnist):
    (x, y), _ = mnist
    torch.manual_seed(0)
    net = Net()
    net.dropout1.p = net.dropout2.p = 0.0  # the same computation in training mode, without random masks
    model = pylenet.from_torch(net, (1, 28, 28))
    step = pylenet.compile(model, optimizer=optim.SGD(0.1), loss=PF.nll_loss, batch_size=32)
    loss = step(x[:32], y[:32])
    net.train()
    ref = F.nll_loss(net(torch.from_numpy(x[:32])), torch.from_numpy(y[:32]))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    grads = step.grads()
    assert list(grads) == [k for k, _ in net.named_parameters()]
    for k, p in net.named_parameters():
        assert_close(np.array(grads[k]), p.grad.numpy(), rtol=1e-4, what=f"d loss / d {k}")


# ------------------------------------------------------------------------------ user classes, batch norm
@needs_torch
def test_residual_concat_batchnorm_model(mnist):
    net = rescat_with_statistics()
    model = pylenet.from_torch(net, (1, 28, 28))
    assert tree(model) == tree(net)
    assert type(model.blocks[1]).__name__ == "Block" and isinstance(model.stem, pylenet.nn.Sequential)
    assert_same_state(model, net)
    assert int(model.blocks[0].bn.num_batches_tracked) == 3
    (x, _), _ = mnist
    assert_close(model(x[:32]), torch_out(net, x[:32]), what="eval outputs")
    with pytest.raises(TypeError, match="imported from PyTorch as part of a model"):
        model.blocks[0](x[:2])


@needs_torch
def test_training_mode_batch_statistics_and_gradients_match_torch(mnist):
    (x, y), _ = mnist
    net = rescat_with_statistics(p=0.0)
    model = pylenet.from_torch(net, (1, 28, 28))
    net.train()
    model.train()
    xt = torch.from_numpy(x[:32])
    out = net(xt)  # batch statistics, running statistics updated
    assert_close(model(x[:32]), out.detach().numpy(), what="training-mode outputs")
    sd, tsd = model.state_dict(), net.state_dict()
    for k in tsd:
        assert_close(np.asarray(sd[k], np.float64), tsd[k].numpy().astype(np.float64), dtype=None, what=k)
    net.zero_grad()
    F.nll_loss(net(xt), torch.from_numpy(y[:32])).backward()
    step = pylenet.compile(model, optimizer=optim.SGD(0.0), loss=PF.nll_loss, batch_size=32)
    step(x[:32], y[:32])
    grads = step.grads()
    for k, p in net.named_parameters():  # (a bias before batch norm has gradient 0, up to rounding)
        assert_close(np.array(grads[k]), p.grad.numpy(), rtol=1e-4, atol=1e-5, what=f"d loss / d {k}")


@needs_torch
def test_functional_dropout_follows_the_mode_and_frozen_parameters_stay_frozen():
    def forward(self, x):
        x = F.dropout(self.fc(x), 0.5, training=self.training)
        return F.log_softmax(x, dim=1)
    torch.manual_seed(0)
    net = Ops(forward, fc=nn.Linear(20, 10))
    net.fc.bias.requires_grad_(False)
    model = pylenet.from_torch(net, (20,))
    assert model.training and not model.fc.bias.requires_grad and model.fc.weight.requires_grad
    x = np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)
    train_out = model(x)
    assert np.mean(np.isclose(np.exp(train_out).sum(1), 1.0)) == 1.0
    model.eval()
    assert_close(model(x), torch_out(net.eval(), x), what="eval: dropout off")
    model.train()
    assert not np.allclose(model(x), torch_out(net, x))  # training: dropout on


# ------------------------------------------------------------------------------ one module per op
def _conv_ops():
    return [
        ("F.relu", lambda s, x: F.relu(x), {}),
        ("torch.relu", lambda s, x: torch.relu(x), {}),
        ("Tensor.relu", lambda s, x: x.relu(), {}),
        ("torch.tanh", lambda s, x: torch.tanh(x), {}),
        ("Tensor.tanh", lambda s, x: x.tanh(), {}),
        ("torch.sigmoid", lambda s, x: torch.sigmoid(x), {}),
        ("Tensor.sigmoid", lambda s, x: x.sigmoid(), {}),
        ("F.leaky_relu", lambda s, x: F.leaky_relu(x, 0.2), {}),
        ("F.relu inplace", lambda s, x: F.relu(s.conv(x), inplace=True), {"conv": nn.Conv2d(3, 4, 3)}),
        ("F.max_pool2d", lambda s, x: F.max_pool2d(x, 2), {}),
        ("F.max_pool2d stride padding", lambda s, x: F.max_pool2d(x, 3, stride=2, padding=1), {}),
        ("F.avg_pool2d", lambda s, x: F.avg_pool2d(x, 2, 1), {}),
        ("+ residual", lambda s, x: x + F.relu(s.conv(x)), {"conv": nn.Conv2d(3, 3, 3, padding=1)}),
        ("torch.add", lambda s, x: torch.add(x, s.conv(x)), {"conv": nn.Conv2d(3, 3, 1)}),
        ("torch.cat", lambda s, x: torch.cat((x, s.conv(x)), 1), {"conv": nn.Conv2d(3, 5, 1)}),
        ("torch.cat dim=-3", lambda s, x: torch.cat([s.conv(x), x], dim=-3), {"conv": nn.Conv2d(3, 2, 1)}),
        ("F.conv2d", lambda s, x: F.conv2d(x, s.w, s.b, stride=2, padding=1),
         {"w": nn.Parameter(torch.randn(4, 3, 3, 3)), "b": nn.Parameter(torch.randn(4))}),
        ("F.conv2d same", lambda s, x: F.conv2d(x, s.w, padding="same"), {"w": nn.Parameter(torch.randn(2, 3, 3, 3))}),
        ("Conv2d", None, {"m": nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)}),
        ("Conv2d same", None, {"m": nn.Conv2d(3, 4, 5, padding="same")}),
        ("Conv2d valid", None, {"m": nn.Conv2d(3, 4, (3, 1), padding="valid")}),
        ("MaxPool2d", None, {"m": nn.MaxPool2d(3, 2, 1)}),
        ("AvgPool2d", None, {"m": nn.AvgPool2d((2, 1))}),
        ("ReLU Tanh Sigmoid LeakyReLU", None, {"m": nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Tanh(),
                                                                    nn.Sigmoid(), nn.LeakyReLU(0.3))}),
        ("BatchNorm2d", None, {"m": nn.BatchNorm2d(3, eps=1e-3, momentum=0.2)}),
        ("BatchNorm2d no affine", None, {"m": nn.BatchNorm2d(3, affine=False)}),
        ("Identity Dropout", None, {"m": nn.Sequential(nn.Identity(), nn.Dropout(0.4), nn.Identity())}),
    ]


def _flat_ops():
    return [
        ("torch.flatten", lambda s, x: s.fc(torch.flatten(x, 1)), {"fc": nn.Linear(48, 5)}),
        ("Tensor.flatten", lambda s, x: s.fc(x.flatten(1)), {"fc": nn.Linear(48, 5)}),
        ("view size(0)", lambda s, x: s.fc(x.view(x.size(0), -1)), {"fc": nn.Linear(48, 5)}),
        ("reshape -1", lambda s, x: s.fc(x.reshape(-1, 48)), {"fc": nn.Linear(48, 5)}),
        ("view shape arithmetic", lambda s, x: s.fc(x.view(x.shape[0], x.shape[1] * x.size()[2] * x.size(3))),
         {"fc": nn.Linear(48, 5)}),
        ("torch.reshape contiguous", lambda s, x: s.fc(torch.reshape(x.contiguous(), (x.size(0), 48))),
         {"fc": nn.Linear(48, 5)}),
        ("F.linear", lambda s, x: F.linear(x.flatten(1), s.w, s.b),
         {"w": nn.Parameter(torch.randn(5, 48) * 0.1), "b": nn.Parameter(torch.randn(5))}),
        ("F.log_softmax", lambda s, x: F.log_softmax(s.fc(x.flatten(1)), dim=1), {"fc": nn.Linear(48, 5)}),
        ("F.softmax", lambda s, x: F.softmax(s.fc(x.flatten(1)), 1), {"fc": nn.Linear(48, 5)}),
        ("torch.log_softmax", lambda s, x: torch.log_softmax(s.fc(x.flatten(1)), -1), {"fc": nn.Linear(48, 5)}),
        ("Tensor.softmax", lambda s, x: s.fc(x.flatten(1)).softmax(dim=-1), {"fc": nn.Linear(48, 5)}),
        ("F.dropout eval", lambda s, x: F.dropout(x.flatten(1), 0.5, training=s.training), {}),
        ("Flatten Linear BatchNorm1d LogSoftmax", None, {"m": nn.Sequential(
            nn.Flatten(), nn.Linear(48, 6, bias=False), nn.BatchNorm1d(6), nn.LogSoftmax(dim=1))}),
        ("Softmax", None, {"m": nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.Softmax(-1))}),
        ("nested Sequential", None, {"m": nn.Sequential(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()),
                                                        nn.Flatten(), nn.Sequential(nn.Linear(32, 3)))}),
    ]


OPS = [(name, fn, members, (3, 4, 4)) for name, fn, members in (_conv_ops() + _flat_ops() if torch else [])]


def _module(fn, members):
    if fn is None:  # a layer (or Sequential) on its own
        return members["m"]
    return Ops(fn, **members)


@needs_torch
@pytest.mark.parametrize("name,fn,members,shape", OPS, ids=[o[0] for o in OPS])
def test_each_supported_op_gives_torch_outputs(name, fn, members, shape):
    torch.manual_seed(3)
    net = _module(fn, members)
    with torch.no_grad():  # batch norm with statistics of its own
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    net.eval()
    model = pylenet.from_torch(net, shape)
    assert_same_state(model, net, name)
    x = np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32)
    assert_close(model(x), torch_out(net, x), what=name)


@needs_torch
def test_a_sequential_of_layers_becomes_a_pylenet_sequential(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 14 * 14, 10)).eval()
    model = pylenet.from_torch(net, (1, 28, 28))
    assert type(model) is pylenet.nn.Sequential and model.input_shape == (1, 28, 28)
    again = pylenet.load(pylenet.save(model, tmp_path / "seq.npz"))
    assert type(again) is pylenet.nn.Sequential and repr(again) == repr(net)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert_close(again(x), torch_out(net, x))


# ------------------------------------------------------------------------------ save, load, pickle
@needs_torch
@pytest.mark.parametrize("which", ["Net", "ResCat"])
def test_save_load_and_pickle_round_trip(which, tmp_path, mnist):
    torch.manual_seed(0)
    net = Net().eval() if which == "Net" else rescat_with_statistics()
    model = pylenet.from_torch(net, (1, 28, 28))
    (x, _), _ = mnist
    ref = torch_out(net, x[:16])
    loaded = pylenet.load(pylenet.save(model, tmp_path / "m.npz"))
    assert isinstance(loaded, pylenet.GraphModule) and repr(loaded).startswith(f"{which}(\n")
    assert [p for p, _ in loaded.named_modules()] == [p for p, _ in net.named_modules()]
    loaded.eval()
    assert_same_state(loaded, net)
    assert_close(loaded(x[:16]), ref, what="after save / load")
    # (Unpickled batch-norm buffers are refused by the executor, for any pylenet model: their
    # dtype is float32 but not numpy's own float32 object, which compile checks by identity.)
    copy = pickle.loads(pickle.dumps(model)) if which == "Net" else deepcopy(model)
    assert type(copy).__name__ == which and list(copy.state_dict()) == list(net.state_dict())
    assert_close(copy(x[:16]), ref, what="after pickle / deepcopy")


# ------------------------------------------------------------------------------ errors
if torch is not None:
    class Unsupported(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.act = nn.GELU()
            self.proj = nn.Parameter(torch.ones(8, 8))

        def forward(self, x):
            x = self.act(self.fc(x))
            x = torch.matmul(x, self.proj)
            return F.log_softmax(x, dim=1)

    class ManyUnsupported(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, dilation=2)
            self.drop = nn.Dropout2d(0.5)
            self.unused = nn.ELU()

        def forward(self, x):
            x = self.drop(self.conv(x))
            x = torch.cat([x, x], dim=0) * 2
            return x[:, 0].flatten(1)

    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            y = self.a(x)
            z = F.relu(y, inplace=True)
            return self.b(z + y), z

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return x


@needs_torch
def test_unsupported_operations_are_listed_at_once_by_name_and_line():
    with pytest.raises(ValueError) as e:
        pylenet.from_torch(Unsupported(), (8,))
    msg = str(e.value)
    gelu, matmul = line_of(Unsupported.forward, "self.act("), line_of(Unsupported.forward, "torch.matmul")
    assert msg.startswith(f"from_torch: 2 unsupported operations in Unsupported: torch.nn.GELU at {HERE}:{gelu} "
                          f"(self.act); torch.matmul at {HERE}:{matmul}. pylenet has the layers Conv2d"), msg
    assert e.value.unsupported == [f"torch.nn.GELU at {HERE}:{gelu} (self.act)", f"torch.matmul at {HERE}:{matmul}"]


@needs_torch
def test_unsupported_arguments_and_unused_layers_say_why():
    with pytest.raises(ValueError) as e:
        pylenet.from_torch(ManyUnsupported(), (3, 12, 12))
    problems = e.value.unsupported
    f = ManyUnsupported.forward
    drop, cat, index = line_of(f, "self.drop("), line_of(f, "torch.cat"), line_of(f, "x[:, 0]")
    assert problems == [
        f"torch.nn.Conv2d at {HERE}:{drop} (self.conv: dilation=(2, 2), pylenet has dilation=1 only)",
        f"torch.nn.Dropout2d at {HERE}:{drop} (self.drop)",
        f"torch.cat at {HERE}:{cat} (dim=0, pylenet joins along the channels (dim 1) only)",
        f"operator.mul (*) at {HERE}:{cat} (on tensors: pylenet's only op between tensors is + (residual add))",
        f"operator.getitem ([]) at {HERE}:{index} (indexing or slicing a tensor: pylenet's graph has no such op)",
        "torch.nn.ELU (self.unused, not called in forward())",
    ], problems
    with pytest.raises(ValueError) as e:
        pylenet.from_torch(Aliased(), (4,))
    assert e.value.unsupported == [
        f"torch.nn.functional.relu at {HERE}:{line_of(Aliased.forward, 'inplace=True')} (in place, and its input is "
        "used again afterwards: pylenet computes a new value)",
        "returning tuple (a pylenet model returns one tensor)",
        "a shared parameter (self.a.weight is also self.b.weight)"]


@needs_torch
def test_a_forward_fx_cannot_trace_is_a_clear_error():
    line = line_of(DataDependent.forward, "if x.sum()")
    with pytest.raises(TraceError, match=rf"torch.fx cannot trace DataDependent.forward\(\) \({HERE}:{line}: "
                                         r"if x.sum\(\) > 0:\).*control flow on tensor values"):
        pylenet.from_torch(DataDependent(), (4,))


@needs_torch
def test_what_pylenet_refuses_names_the_torch_models_line():
    def forward(self, x):
        return self.fc(x.view(2, -1))  # the batch of two hard-coded
    with pytest.raises(TraceError, match=rf"from_torch: the imported Ops does not trace in pylenet .*"
                                         rf"Ops \({HERE}:{line_of(forward, 'x.view(2')}\): view/reshape"):
        pylenet.from_torch(Ops(forward, fc=nn.Linear(4, 2)), (4,))


@needs_torch
def test_bad_arguments():
    with pytest.raises(TypeError, match="from_torch: module must be a torch.nn.Module, got LeNet"):
        pylenet.from_torch(pylenet.models.LeNet(), (1, 28, 28))
    with pytest.raises(ValueError, match="input_shape is required"):
        pylenet.from_torch(Net(), None)
    with pytest.raises(ValueError, match=r"fails in torch itself on an input of shape \(2, 3, 28, 28\)"):
        pylenet.from_torch(Net(), (3, 28, 28))

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y
    with pytest.raises(ValueError, match="a pylenet model takes one input tensor"):
        pylenet.from_torch(TwoInputs(), (4,))


def test_without_torch_it_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"from_torch needs PyTorch.*pip install torch"):
        pylenet.from_torch(object(), (1, 28, 28))


def test_importing_pylenet_does_not_import_torch():
    code = "import sys, pylenet; pylenet.from_torch; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(pylenet.__file__).parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
