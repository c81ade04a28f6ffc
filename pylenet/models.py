"""Model constructors: the LeNets this project is about."""
from .nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tanh

__all__ = ["lenet5", "lenet5_classic", "cudnn_lenet", "MODELS", "create"]

MNIST_NORMALIZATION = (0.1307, 0.3081)


def lenet5(seed=0, num_classes=10):
    """LeNet-5 as in the PyTorch tutorials, for 1x28x28 input: ReLU and max pooling."""
    return Sequential(
        Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
        Flatten(), Linear(16 * 5 * 5, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, num_classes),
        input_shape=(1, 28, 28), name="lenet5", seed=seed, normalization=MNIST_NORMALIZATION)


def lenet5_classic(seed=0, num_classes=10):
    """LeCun et al. 1998's layout: tanh activations and average pooling (full C3 connections)."""
    return Sequential(
        Conv2d(1, 6, 5, padding=2), Tanh(), AvgPool2d(2),
        Conv2d(6, 16, 5), Tanh(), AvgPool2d(2),
        Flatten(), Linear(16 * 5 * 5, 120), Tanh(), Linear(120, 84), Tanh(), Linear(84, num_classes),
        input_shape=(1, 28, 28), name="lenet5_classic", seed=seed, normalization=MNIST_NORMALIZATION)


def cudnn_lenet(seed=0, num_classes=10):
    """The network of NVIDIA's cudnn-training sample (lenet.cu): conv 20@5x5, max-pool 2,
    conv 50@5x5, max-pool 2, fc 500, ReLU, fc 10."""
    return Sequential(
        Conv2d(1, 20, 5), MaxPool2d(2), Conv2d(20, 50, 5), MaxPool2d(2),
        Flatten(), Linear(50 * 4 * 4, 500), ReLU(), Linear(500, num_classes),
        input_shape=(1, 28, 28), name="cudnn_lenet", seed=seed, normalization=MNIST_NORMALIZATION)


MODELS = {"lenet5": lenet5, "lenet5_classic": lenet5_classic, "cudnn_lenet": cudnn_lenet}


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
    return model.load_state_dict(import_cudnn_weights(folder))


def _require_cudnn_layout(model):
    if model.architecture() != cudnn_lenet().architecture() or model.input_shape != (1, 28, 28):
        raise ValueError("cudnn-training's weight files hold the cudnn_lenet architecture only; "
                         f"this model is {model.name}")
