"""Model constructors: the LeNets this project is about, as ordinary pylenet modules.

``lenet5``, ``lenet5_classic`` and ``cudnn_lenet`` are Sequentials (parameter names "0.weight",
...). ``LeNet`` is the same network as lenet5 written as a class, as the PyTorch tutorial
writes it, and ``MnistNet`` is PyTorch's examples/mnist network (dropout, log_softmax; it is
trained with F.nll_loss, Adadelta lr 1.0 and StepLR gamma 0.7).
"""
from . import functional as F
from .nn import AvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential, Tanh
from .nn.init import seeded

__all__ = ["lenet5", "lenet5_classic", "lenet_bn", "cudnn_lenet", "LeNet", "MnistNet", "lenet", "mnist_net", "MODELS",
           "create"]

MNIST_NORMALIZATION = (0.1307, 0.3081)


def lenet5(seed=0, num_classes=10):
    """LeNet-5 as in the PyTorch tutorials, for 1x28x28 input: ReLU and max pooling."""
    with seeded(seed):  # PyTorch's initialisation rules, from a generator of its own
        return Sequential(
            Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2),
            Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
            Flatten(), Linear(16 * 5 * 5, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, num_classes),
            input_shape=(1, 28, 28), name="lenet5", normalization=MNIST_NORMALIZATION)


def lenet5_classic(seed=0, num_classes=10):
    """LeCun et al. 1998's layout: tanh activations and average pooling (full C3 connections)."""
    with seeded(seed):
        return Sequential(
            Conv2d(1, 6, 5, padding=2), Tanh(), AvgPool2d(2),
            Conv2d(6, 16, 5), Tanh(), AvgPool2d(2),
            Flatten(), Linear(16 * 5 * 5, 120), Tanh(), Linear(120, 84), Tanh(), Linear(84, num_classes),
            input_shape=(1, 28, 28), name="lenet5_classic", normalization=MNIST_NORMALIZATION)


def lenet_bn(seed=0, num_classes=10):
    """A LeNet with batch norm after each convolution (whose bias it makes redundant) and one
    hidden fully connected layer: conv 6@5x5, BN, ReLU, max-pool, conv 16@5x5, BN, ReLU,
    max-pool, fc 120, ReLU, fc 10. The speedrun's network (pylenet.speedrun): 99 % in one epoch."""
    from .nn import BatchNorm2d
    with seeded(seed):
        return Sequential(
            Conv2d(1, 6, 5, padding=2, bias=False), BatchNorm2d(6), ReLU(), MaxPool2d(2),
            Conv2d(6, 16, 5, bias=False), BatchNorm2d(16), ReLU(), MaxPool2d(2),
            Flatten(), Linear(16 * 5 * 5, 120), ReLU(), Linear(120, num_classes),
            input_shape=(1, 28, 28), name="lenet_bn", normalization=MNIST_NORMALIZATION)


def cudnn_lenet(seed=0, num_classes=10):
    """The network of NVIDIA's cudnn-training sample (lenet.cu): conv 20@5x5, max-pool 2,
    conv 50@5x5, max-pool 2, fc 500, ReLU, fc 10."""
    with seeded(seed):
        return Sequential(
            Conv2d(1, 20, 5), MaxPool2d(2), Conv2d(20, 50, 5), MaxPool2d(2),
            Flatten(), Linear(50 * 4 * 4, 500), ReLU(), Linear(500, num_classes),
            input_shape=(1, 28, 28), name="cudnn_lenet", normalization=MNIST_NORMALIZATION)


class LeNet(Module):
    """LeNet-5 as a class (the PyTorch tutorial's): the same layers and results as lenet5()."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = Conv2d(1, 6, 5, padding=2)
        self.conv2 = Conv2d(6, 16, 5)
        self.fc1 = Linear(16 * 5 * 5, 120)
        self.fc2 = Linear(120, 84)
        self.fc3 = Linear(84, num_classes)
        self.input_shape = (1, 28, 28)
        self.normalization = MNIST_NORMALIZATION

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MnistNet(Module):
    """PyTorch's examples/mnist ``Net``: two 3x3 convolutions, max pooling, dropout, two fully
    connected layers and log_softmax (train it with F.nll_loss)."""

    def __init__(self):
        super().__init__()
        self.conv1 = Conv2d(1, 32, 3, 1)
        self.conv2 = Conv2d(32, 64, 3, 1)
        self.dropout1 = Dropout(0.25)
        self.dropout2 = Dropout(0.5)
        self.fc1 = Linear(9216, 128)
        self.fc2 = Linear(128, 10)
        self.input_shape = (1, 28, 28)
        self.normalization = MNIST_NORMALIZATION

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = F.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def lenet(seed=0, num_classes=10):
    """LeNet (the class), initialised as lenet5(seed) is: the same weights."""
    with seeded(seed):  # the layers draw in lenet5's order: conv1, conv2, fc1, fc2, fc3
        return LeNet(num_classes)


def mnist_net(seed=0):
    with seeded(seed):
        return MnistNet()


MODELS = {"lenet5": lenet5, "lenet5_classic": lenet5_classic, "lenet_bn": lenet_bn, "cudnn_lenet": cudnn_lenet,
          "lenet": lenet, "mnist_net": mnist_net}


def create(name, **kwargs):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (expected one of {', '.join(MODELS)})")
    return MODELS[name](**kwargs)


def export_cudnn_training(model, folder):
    """Writes a cudnn_lenet's weights as cudnn-training's raw .bin files (conv1.bin, ...)."""
    from .cudnn_format import export_cudnn_weights
    _require_cudnn_layout(model)
    return export_cudnn_weights(model.state_dict(), folder)


def import_cudnn_training(folder, model=None):
    """A cudnn_lenet (or the given one) holding the weights of cudnn-training's .bin files."""
    from .cudnn_format import import_cudnn_weights
    model = model if model is not None else cudnn_lenet()
    _require_cudnn_layout(model)
    model.load_state_dict(import_cudnn_weights(folder))
    return model


def _require_cudnn_layout(model):
    reference = {k: v.shape for k, v in cudnn_lenet().state_dict().items()}
    own = {k: v.shape for k, v in model.state_dict().items()}
    if own != reference:
        name = getattr(model, "name", None) or type(model).__name__
        raise ValueError("cudnn-training's weight files hold the cudnn_lenet architecture only (parameters "
                         f"{', '.join(f'{k} {tuple(s)}' for k, s in reference.items())}); this model is {name}")
