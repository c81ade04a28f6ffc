"""The models of the text pylenet is built from, written as their authors wrote them, trained end to end.

- The ten-line LeNet class of the PyTorch tutorial (with ``import pylenet.nn as nn,
  pylenet.functional as F`` in place of torch's) trains bit for bit like ``models.lenet5``
  from the same weights, and reaches 99 % on MNIST with ``pylenet.train``.
- PyTorch's examples/mnist ``Net`` (dropout, log_softmax + nll_loss, Adadelta lr 1.0, StepLR
  gamma 0.7) learns MNIST as it does in PyTorch.
Skipped where MNIST is not available (set $PYLENET_DATA).
"""
import os
from pathlib import Path

import numpy as np
import pytest

import pylenet
import pylenet.functional as F
import pylenet.nn as nn
from pylenet import models, optim


def data_root():
    env = os.environ.get("PYLENET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist():
    if not (data_root() / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found under {data_root()} (set $PYLENET_DATA)")
    return (pylenet.datasets.mnist(data_root(), train=True, download=False),
            pylenet.datasets.mnist(data_root(), train=False, download=False))


class LeNet(nn.Module):  # the tutorial's class, as written there
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x):
        size = x.size()[1:]  # all dimensions except the batch dimension
        num_features = 1
        for s in size:
            num_features *= s
        return num_features


def cli_recipe():
    return optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def test_the_class_trains_bit_for_bit_like_lenet5(mnist):
    train_set, test_set = mnist
    ref = models.lenet5(seed=3)
    net = LeNet()
    net.load_state_dict(dict(zip(net.state_dict(), ref.state_dict().values())))  # the same weights, in order
    data = train_set.subset(2000)
    ha = pylenet.train(ref, data, epochs=2, batch_size=64, optimizer=cli_recipe(), schedule="cosine", seed=1,
                       progress=False, eval_set=test_set.subset(1000))
    hb = pylenet.train(net, data, epochs=2, batch_size=64, optimizer=cli_recipe(), schedule="cosine", seed=1,
                       progress=False, eval_set=test_set.subset(1000))
    for a, b in zip(ref.state_dict().values(), net.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    assert ha.loss == hb.loss and ha.eval_accuracy == hb.eval_accuracy


def test_the_class_reaches_99_percent(mnist):
    """The CLI's recipe (10 epochs, batch 64, SGD 0.05 Nesterov, cosine) on the class."""
    train_set, test_set = mnist
    pylenet.manual_seed(0)
    net = LeNet()
    h = pylenet.train(net, train_set, epochs=10, batch_size=64, optimizer=cli_recipe(), schedule="cosine",
                      eval_set=test_set, seed=0, progress=False)
    print("LeNet class:", h.eval_accuracy, "seconds/epoch:", [round(s, 2) for s in h.seconds])
    assert h.eval_accuracy[-1] >= 0.99
    assert pylenet.evaluate(net, test_set)["accuracy"] == h.eval_accuracy[-1]


def test_pytorch_mnist_example_net(mnist):
    """examples/mnist: 3 epochs of Adadelta (lr 1.0) with StepLR (gamma 0.7) and the NLL of
    log_softmax, batch 64. Measured here after 3 epochs: 98.92, 98.95, 98.91 and 99.00 % for
    seeds 0-3, and PyTorch 2.13 on the same data and recipe (seed 1): 98.41 / 98.79 / 98.93 %
    after epochs 1-3 (pylenet, seed 1: 98.39 / 98.72 / 98.95 %). The floor allows the spread
    over seeds."""
    train_set, test_set = mnist
    m = models.mnist_net(seed=0)
    h = pylenet.train(m, train_set, epochs=3, batch_size=64, optimizer=optim.Adadelta(lr=1.0),
                      schedule=optim.StepLR(1, 0.7), loss=F.nll_loss, eval_set=test_set, seed=0, progress=False)
    print("mnist Net:", h.eval_accuracy, "seconds/epoch:", [round(s, 1) for s in h.seconds])
    assert h.lr == [1.0, 0.7, pytest.approx(0.49)]
    assert h.eval_accuracy[0] >= 0.975 and h.eval_accuracy[-1] >= 0.988
