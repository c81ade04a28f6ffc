"""pylenet.viz and `pylenet plot` / `train --plot`: every picture is a real PNG, and the numbers
drawn are the model's (feature maps against an independent NumPy reference and the compiled
forward, the confusion matrix against a bincount of predict(), the worst images against every
image's loss)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pylenet
import pylenet.functional as F
import pylenet.nn as nn
from pylenet import models

import reference as ref
from conftest import assert_close

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from pylenet import viz  # noqa: E402
from test_cli import HAVE_MNIST, assert_clean_failure, cli, data_root, needs_mnist, write_png  # noqa: E402


def read_png(path, min_size=(200, 300)):
    """The picture at path, checked: a PNG file (signature), of plausible size, not blank."""
    path = str(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1], img.shape
    assert img[..., :3].std() > 0.02, f"{path} is blank"
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")], "a temporary was left"
    return img


def small_data(n=300, seed=0):
    """(images normalised like MNIST's, labels): MNIST's first test images if present, else noise."""
    if HAVE_MNIST:
        test = pylenet.datasets.mnist(data_root(), train=False, download=False)
        return test.subset(n)
    rng = np.random.default_rng(seed)
    return pylenet.datasets.Dataset(rng.standard_normal((n, 1, 28, 28)).astype(np.float32),
                                    rng.integers(0, 10, n), name="noise")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lenet5 trained a little (1 epoch on 600 images), and its checkpoint."""
    data = small_data(600)
    model = models.lenet5()
    history = pylenet.train(model, data, epochs=2, batch_size=32, optimizer=pylenet.optim.SGD(0.05, momentum=0.9),
                            eval_set=data.subset(200), progress=False)
    path = tmp_path_factory.mktemp("viz") / "m.npz"
    model.save(path, extra={"dataset": "mnist", "history": history.to_dict()})
    return model, history, data, path


class ConvBnNet(nn.Module):
    """Batch norm, dropout, an average pool, a residual add and log_softmax: every kind of node
    the replay must get right in evaluation mode."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 7 * 7, 10)
        self.input_shape = (1, 14, 14)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.tanh(self.conv2(x)) + x
        x = F.avg_pool2d(x, 2)
        return F.log_softmax(self.fc(self.drop(x.view(x.size(0), -1))), 1)


# ----------------------------------------------------------------------------- without matplotlib
def test_importing_pylenet_and_viz_does_not_import_matplotlib(tmp_path):
    code = ("import sys, pylenet, pylenet.viz, pylenet.__main__; "
            "print('matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def hide_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_each_plot_says_what_to_install(monkeypatch, tmp_path):
    hide_matplotlib(monkeypatch)
    model, data = models.lenet5(), small_data(20)
    calls = {
        "plot_history": lambda p: viz.plot_history([{"epoch": 1, "loss": 1.0}], p),
        "plot_filters": lambda p: viz.plot_filters(model, p),
        "plot_feature_maps": lambda p: viz.plot_feature_maps(model, np.zeros((28, 28)), p),
        "plot_confusion": lambda p: viz.plot_confusion(model, data, p),
        "plot_worst": lambda p: viz.plot_worst(model, data, p),
    }
    for name, call in calls.items():
        with pytest.raises(ImportError) as e:
            call(tmp_path / f"{name}.png")
        assert name in str(e.value) and 'pip install "pylenet[viz]"' in str(e.value)
    assert not os.listdir(tmp_path)
    # The numbers need no matplotlib.
    assert len(viz.feature_maps(model, np.zeros((28, 28))).stages) == 4


def test_cli_without_matplotlib_is_a_clean_error(tmp_path, trained):
    _, _, _, ckpt = trained
    hide = ("import sys; sys.modules['matplotlib'] = None; from pylenet.__main__ import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYLENET_DATA=str(data_root()))
    for args in (["plot", "filters", str(ckpt), "f.png"],
                 ["train", "--limit", "64", "--epochs", "1", "--quiet", "--plot", "."]):
        r = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert_clean_failure(r, 'pip install "pylenet[viz]"')
        assert "training" not in r.stdout
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- history
def test_plot_history_draws_the_records(tmp_path, trained):
    _, history, _, _ = trained
    fig = viz.plot_history(history, tmp_path / "h.png")
    read_png(tmp_path / "h.png")
    loss_ax, acc_ax = fig.axes[:2]
    (train_x, train_y), (eval_x, eval_y) = [(line.get_xdata(), line.get_ydata()) for line in loss_ax.get_lines()]
    assert list(train_x) == [1, 2] and list(eval_x) == [1, 2]
    assert_close(np.array(train_y), history.loss, dtype=None)
    assert_close(np.array(eval_y), history.eval_loss, dtype=None)
    accs = [np.array(line.get_ydata()) for line in acc_ax.get_lines()]
    assert_close(accs[0], 100 * np.array(history.train_accuracy), dtype=None)
    assert_close(accs[1], 100 * np.array(history.eval_accuracy), dtype=None)
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_legend() is not None
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    assert f"{100 * history.eval_accuracy[-1]:.2f} %" in fig.get_suptitle()

    # The same from to_dict(), a list of records and the file `pylenet train --history` writes.
    record = {"args": {"model": "lenet5", "dataset": "mnist"}, "history": history.to_dict(), "total_seconds": 1.0}
    (tmp_path / "h.json").write_text(json.dumps(record))
    for source in (history.to_dict(), history.epochs, tmp_path / "h.json", str(tmp_path / "h.json")):
        fig = viz.plot_history(source, tmp_path / "h2.png")
        assert_close(np.array(fig.axes[0].get_lines()[0].get_ydata()), history.loss, dtype=None)
    assert fig.get_suptitle().startswith("lenet5 on mnist")
    # One epoch, train records only (no eval set): still two labelled panels.
    fig = viz.plot_history([{"epoch": 1, "loss": 0.5, "train_accuracy": 0.8}], tmp_path / "one.png")
    read_png(tmp_path / "one.png")
    assert [t for t in fig.axes[0].get_xticks()] == [1] and len(fig.axes[0].get_lines()) == 1
    assert viz.plot_history(history, None).axes  # path None: the figure only


def test_plot_history_refuses_bad_input(tmp_path):
    good = [{"epoch": 1, "loss": 1.0}]
    with pytest.raises(FileNotFoundError, match="no such history file"):
        viz.plot_history(tmp_path / "missing.json", tmp_path / "h.png")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON history"):
        viz.plot_history(tmp_path / "bad.json", tmp_path / "h.png")
    cases = [([], "no epochs"), ({"epochs": "x"}, "no list of epochs"), ([{"epoch": 1}], "no loss"),
             ([{"epoch": 1, "loss": float("nan")}], "not a finite number"),
             ([{"epoch": 2, "loss": 1.0}, {"epoch": 1, "loss": 1.0}], "not in increasing order"),
             ([{"epoch": 1.5, "loss": 1.0}], "not a whole number"), (["x"], "not a dict")]
    for history, needle in cases:
        with pytest.raises(ValueError, match=needle):
            viz.plot_history(history, tmp_path / "h.png")
    with pytest.raises(TypeError, match="expected a History"):
        viz.plot_history(3, tmp_path / "h.png")
    with pytest.raises(ValueError, match="must end in .png"):
        viz.plot_history(good, tmp_path / "h.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        viz.plot_history(good, tmp_path / "no" / "h.png")
    with pytest.raises(ValueError, match="is a folder"):
        os.mkdir(tmp_path / "d.png")
        viz.plot_history(good, tmp_path / "d.png")
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "d.png"]


# ----------------------------------------------------------------------------- filters
def test_conv_layers_in_the_order_forward_applies_them():
    assert [n for n, _ in viz.conv_layers(models.lenet5())] == ["0", "3"]
    assert [n for n, _ in viz.conv_layers(models.LeNet())] == ["conv1", "conv2"]

    class Backwards(nn.Module):  # declared in the other order; an F.conv2d on a bare parameter
        def __init__(self):
            super().__init__()
            self.late = nn.Conv2d(4, 2, 3)
            self.early = nn.Conv2d(1, 4, 3)
            self.kernel = nn.Parameter(np.ones((3, 2, 1, 1), np.float32))
            self.input_shape = (1, 8, 8)

        def forward(self, x):
            return F.conv2d(self.late(self.early(x)), self.kernel).view(x.size(0), -1)

    m = Backwards()
    layers = viz.conv_layers(m)
    assert [n for n, _ in layers] == ["early", "late", "kernel"]
    assert layers[0][1] is m.early.weight and layers[2][1] is m.kernel


def test_plot_filters_draws_the_weights_on_one_symmetric_scale(tmp_path, trained):
    model, _, _, ckpt = trained
    w = model[0].weight  # 6 filters of 1x5x5: one picture each
    fig = viz.plot_filters(model, tmp_path / "f.png")
    read_png(tmp_path / "f.png", (150, 400))
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 6
    for k, im in enumerate(images):
        assert_close(np.asarray(im.get_array()), w[k, 0], dtype=None)
        assert im.get_clim() == pytest.approx((-np.abs(w).max(), np.abs(w).max()))
        assert im.axes.get_title() == f"filter {k}"
    assert "6 filters of 1×5×5" in fig.get_suptitle()

    # A layer of 6 input channels, by its path (here from the checkpoint): one column per
    # filter, one row per input channel.
    w = model[3].weight
    fig = viz.plot_filters(ckpt, tmp_path / "f3.png", layer="3")
    read_png(tmp_path / "f3.png")
    im = fig.axes[0].get_images()[0]
    mosaic = np.asarray(im.get_array().filled(np.nan))
    step = 5 + 1  # 5x5 kernels, 1 pixel apart
    for o in (0, 7, 15):
        for i in (0, 5):
            assert_close(mosaic[i * step:i * step + 5, o * step:o * step + 5], w[o, i], dtype=None)
    assert np.isnan(mosaic[5, :]).all() and np.isnan(mosaic[:, 5]).all()
    assert im.get_clim() == pytest.approx((-np.abs(w).max(), np.abs(w).max()))
    assert fig.axes[0].get_xlabel() == "filter (output channel)" and fig.axes[0].get_ylabel() == "input channel"
    assert "16 filters of 6×5×5" in fig.axes[0].get_title()
    fig = viz.plot_filters(models.LeNet(), tmp_path / "f4.png", layer="conv2.weight")
    assert "conv2 (Conv2d)" in fig.axes[0].get_title()


def test_plot_filters_refuses_what_is_not_a_conv_layer(tmp_path):
    with pytest.raises(ValueError, match=r"layer '7' is a Linear, not a conv layer \(conv layers: 0, 3\)"):
        viz.plot_filters(models.lenet5(), tmp_path / "f.png", layer=7)
    with pytest.raises(ValueError, match=r"has no layer 'conv3' \(conv layers: conv1, conv2\)"):
        viz.plot_filters(models.LeNet(), tmp_path / "f.png", layer="conv3")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), input_shape=(1, 2, 2), name="mlp")
    with pytest.raises(ValueError, match="mlp has no conv layers"):
        viz.plot_filters(mlp, tmp_path / "f.png")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        viz.plot_filters(tmp_path / "missing.npz", tmp_path / "f.png")
    with pytest.raises(TypeError, match="expected a pylenet Module"):
        viz.plot_filters(object(), tmp_path / "f.png")
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- feature maps
def test_feature_maps_are_the_layers_outputs(trained):
    """Against an independent float64 NumPy reference of lenet5, layer by layer, and the output
    against the compiled forward."""
    model, _, data, _ = trained
    x = data.images[0]  # normalised already (values below 0): used as given
    fm = viz.feature_maps(model, x)
    assert fm.normalization is None and fm.input.shape == (1, 28, 28)
    assert [(s.kind, s.value.shape) for s in fm.stages] == [
        ("conv", (6, 28, 28)), ("pool", (6, 14, 14)), ("conv", (16, 10, 10)), ("pool", (16, 5, 5))]
    assert fm.stages[0].name == "[0] Conv2d → [1] ReLU" and fm.stages[1].name == "[2] MaxPool2d"
    c1 = ref.relu(ref.conv2d(x[None], model[0].weight, model[0].bias, padding=2))
    s2 = ref.max_pool2d(c1, 2)
    c3 = ref.relu(ref.conv2d(s2, model[3].weight, model[3].bias))
    s4 = ref.max_pool2d(c3, 2)
    for stage, want in zip(fm.stages, (c1, s2, c3, s4)):
        assert_close(stage.value, want[0], rtol=1e-4, atol=1e-5, what=stage.name)
    model.eval()
    logits = model(x[None])
    model.train()
    assert_close(fm.output, logits[0], rtol=1e-4, atol=1e-5)
    assert_close(fm.probabilities, pylenet.runtime.softmax_rows(logits)[0], rtol=1e-4, atol=1e-6, dtype=None)
    assert model.training  # the model's own mode is left as it was


def test_feature_maps_in_eval_mode_through_batch_norm_dropout_and_add(tmp_path):
    pylenet.manual_seed(1)
    m = ConvBnNet()
    m.bn1.running_mean[...] = [0.1, -0.2, 0.3, 0.0]
    m.bn1.running_var[...] = [1.5, 0.5, 2.0, 1.0]
    x = np.random.default_rng(0).standard_normal((1, 14, 14)).astype(np.float32)
    fm = viz.feature_maps(m, x, normalized=True)
    assert [s.name for s in fm.stages] == ["conv1 (Conv2d) → bn1 (BatchNorm2d) → F.relu",
                                           "conv2 (Conv2d) → F.tanh", "F.avg_pool2d 2×2"]
    m.eval()
    assert_close(fm.output, m(x[None])[0], rtol=1e-4, atol=1e-5)
    bn = F.batch_norm(F.conv2d(x[None], m.conv1.weight, m.conv1.bias, padding=1), m.bn1.running_mean,
                      m.bn1.running_var, m.bn1.weight, m.bn1.bias, training=False)
    assert_close(fm.stages[0].value, F.relu(bn)[0], rtol=1e-5, atol=1e-6)
    # log_softmax output: the probabilities are its exp, not a softmax of it
    assert_close(fm.probabilities, np.exp(fm.output.astype(np.float64)), rtol=1e-5, dtype=None)
    assert fm.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    # A checkpoint of the user's class comes back as a GraphModule: the same maps.
    m.save(tmp_path / "u.npz")
    again = pylenet.load(tmp_path / "u.npz")
    assert isinstance(again, pylenet.GraphModule)
    fm2 = viz.feature_maps(again, x, normalized=True)
    for a, b in zip(fm.stages, fm2.stages):
        assert_close(b.value, a.value, rtol=1e-5, atol=1e-6)
    viz.plot_feature_maps(again, x, tmp_path / "u.png", normalized=True)
    read_png(tmp_path / "u.png")


def test_feature_maps_normalise_raw_images():
    model = models.lenet5()  # normalization (0.1307, 0.3081)
    raw = np.random.default_rng(0).random((28, 28))
    want = ((raw - 0.1307) / 0.3081)[None]
    for image, normalized in ((raw, None), (raw[None], False), ((raw * 255).astype(np.uint8), None)):
        fm = viz.feature_maps(model, image, normalized=normalized)
        assert fm.normalization == pytest.approx((0.1307, 0.3081))
        assert_close(fm.input, want, rtol=1e-2 if image.dtype == np.uint8 else 1e-6, atol=0.02, dtype=None)
    fm = viz.feature_maps(model, raw, normalized=True)  # said to be normalised: used as it is
    assert fm.normalization is None and np.allclose(fm.input, raw[None], atol=1e-6)
    fm = viz.feature_maps(model, want - 5)  # outside [0, 1]: taken as normalised
    assert fm.normalization is None and np.allclose(fm.input, want - 5, atol=1e-5)


def test_plot_feature_maps_draws_every_map_and_the_probabilities(tmp_path, trained):
    model, _, data, _ = trained
    label = int(data.labels[0])
    fig = viz.plot_feature_maps(model, data.images[0], tmp_path / "maps.png", label=label)
    read_png(tmp_path / "maps.png", (600, 900))
    fm = viz.feature_maps(model, data.images[0])
    rows = [ax for ax in fig.axes if len(ax.get_images()) > 1]
    assert [len(ax.get_images()) for ax in rows] == [6, 6, 16, 16]
    for ax, stage in zip(rows, fm.stages):
        for j, im in enumerate(ax.get_images()):
            assert_close(np.asarray(im.get_array()), stage.value[j], dtype=None)
    (bars,) = [ax for ax in fig.axes if ax.patches]
    assert_close(np.array([p.get_height() for p in bars.patches]), fm.probabilities, dtype=None)
    pred = int(np.argmax(fm.probabilities))
    assert f"predicted {pred}" in bars.get_title() and f"true {label}" in bars.get_title()
    texts = [t.get_text() for t in fig.texts]
    assert any(t.startswith("[0] Conv2d → [1] ReLU: 6 maps 28×28") for t in texts), texts
    # Many maps: the first max_maps are drawn, and the title says so.
    fig = viz.plot_feature_maps(models.mnist_net(), data.images[0], tmp_path / "mn.png", max_maps=40)
    read_png(tmp_path / "mn.png")
    assert [len(ax.get_images()) for ax in fig.axes if len(ax.get_images()) > 1] == [32, 40, 40]
    assert any("64 maps 24×24 (the first 40 shown)" in t.get_text() for t in fig.texts)
    # Class names on the chart.
    fig = viz.plot_feature_maps(model, data.images[0], None, classes=pylenet.datasets.FASHION_MNIST_CLASSES)
    (bars,) = [ax for ax in fig.axes if ax.patches]
    assert [t.get_text() for t in bars.get_xticklabels()] == pylenet.datasets.FASHION_MNIST_CLASSES


def test_plot_feature_maps_refuses_bad_input(tmp_path):
    model = models.lenet5()
    for image, needle in ((np.zeros((3, 28)), r"image of shape \(3, 28\) does not fit the model: expected one image "
                                              r"\(28, 28\) or \(1, 28, 28\)"),
                          (np.zeros((2, 28, 28)), "does not fit the model"),
                          (np.full((28, 28), np.nan), "NaN or inf")):
        with pytest.raises(ValueError, match=needle):
            viz.plot_feature_maps(model, image, tmp_path / "m.png")
    with pytest.raises(TypeError, match="real numbers"):
        viz.plot_feature_maps(model, np.full((28, 28), "a"), tmp_path / "m.png")
    with pytest.raises(ValueError, match="label 10 is not a class"):
        viz.plot_feature_maps(model, np.zeros((28, 28)), tmp_path / "m.png", label=10)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), input_shape=(1, 2, 2), name="mlp")
    with pytest.raises(ValueError, match="mlp has no conv or pool layers"):
        viz.plot_feature_maps(mlp, np.zeros((2, 2)), tmp_path / "m.png")
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- confusion and worst
def test_confusion_matrix_is_the_bincount_of_the_predictions(tmp_path, trained):
    model, _, data, _ = trained
    pred = model.predict(data.images)
    want = np.bincount(data.labels * 10 + pred, minlength=100).reshape(10, 10)
    m, acc = viz.confusion_matrix(model, data)
    assert m.dtype == np.int64 and (m == want).all() and m.sum() == len(data)
    assert acc == pytest.approx(pylenet.evaluate(model, data)["accuracy"])
    fig = viz.plot_confusion(model, data, tmp_path / "c.png")
    read_png(tmp_path / "c.png", (500, 500))
    ax = fig.axes[0]
    shown = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text().replace(",", ""))
             for t in ax.texts}
    assert shown == {(r, c): int(want[r, c]) for r in range(10) for c in range(10) if want[r, c] or r == c}
    assert_close(np.asarray(ax.get_images()[0].get_array()), want / want.sum(axis=1, keepdims=True), dtype=None)
    assert f"accuracy {100 * acc:.2f} %" in ax.get_title()
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    # An (images, labels) pair of uint8 pixels: scaled and normalised as the model expects.
    raw = pylenet.datasets.Dataset(np.round((data.images * data.std + data.mean) * 255).clip(0, 255), data.labels)
    pair = (raw.images.astype(np.uint8)[:, 0], data.labels)
    m2, acc2 = viz.confusion_matrix(model, pair)
    assert np.abs(m2 - m).sum() <= 4 and abs(acc2 - acc) < 0.01  # rounding to 8 bits moves a prediction or two


def test_worst_examples_have_the_highest_losses(tmp_path, trained):
    model, _, data, _ = trained
    model.eval()
    out = model(data.images).astype(np.float64)
    model.train()
    logp = out - out.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    loss = -logp[np.arange(len(data)), data.labels]
    w = viz.worst_examples(model, data, n=16)
    assert len(w.indices) == 16 and len(set(w.indices.tolist())) == 16
    assert_close(w.losses, loss[w.indices], rtol=1e-4, dtype=None)
    assert np.all(np.diff(w.losses) <= 0)  # worst first
    others = np.delete(loss, w.indices)
    assert others.max() <= w.losses.min() + 1e-4
    assert (w.labels == data.labels[w.indices]).all()
    assert (w.predicted == model.predict(data.images[w.indices])).all()
    fig = viz.plot_worst(model, data, tmp_path / "w.png", n=16)
    read_png(tmp_path / "w.png", (600, 600))
    tiles = [ax for ax in fig.axes if ax.get_images()]
    assert len(tiles) == 16
    for ax, i, t, p in zip(tiles, w.indices, w.labels, w.predicted):
        assert ax.get_title().startswith(f"#{i}: true {t} → {p}\n"), ax.get_title()
        assert ax.title.get_color() == ("#c00000" if t != p else "#006000")
        assert_close(np.asarray(ax.get_images()[0].get_array()), data.images[i, 0] * data.std + data.mean,
                     rtol=1e-5, atol=1e-6, dtype=None)
    assert "the 16 highest-loss of 600 images" in fig.get_suptitle()
    fig = viz.plot_worst(model, data.subset(5), tmp_path / "w5.png", n=16)  # fewer images than n
    assert len([ax for ax in fig.axes if ax.get_images()]) == 5
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a whole number"):
            viz.plot_worst(model, data, tmp_path / "x.png", n=n)
    with pytest.raises(ValueError, match=r"images of shape \(1, 14, 14\) do not match the model's input"):
        viz.plot_worst(model, (np.zeros((4, 1, 14, 14), np.float32), np.zeros(4, np.int64)), tmp_path / "x.png")
    with pytest.raises(TypeError, match="expected a pylenet Dataset"):
        viz.plot_confusion(model, "data", tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"label -2 is not one of the model's 10 classes \(0 to 9\)"):
        viz.plot_confusion(model, (data.images[:3], np.array([1, -2, 11])), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_softmax_output_is_not_softmaxed_again(tmp_path):
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3), nn.Softmax(1), input_shape=(1, 8, 8))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    m.eval()
    probs = m(x).astype(np.float64)
    w = viz.worst_examples(m, (x, y), n=20)
    assert_close(w.probabilities, probs[w.indices], rtol=1e-5, dtype=None)
    assert_close(w.losses, -np.log(probs[w.indices, y[w.indices]]), rtol=1e-5, dtype=None)
    fm = viz.feature_maps(m, x[0], normalized=True)
    assert_close(fm.probabilities, probs[0], rtol=1e-5, dtype=None)


def test_writing_is_atomic_and_replaces_the_old_picture(tmp_path, monkeypatch):
    target = tmp_path / "h.png"
    target.write_bytes(b"old")
    viz.plot_history([{"epoch": 1, "loss": 1.0}], target)
    read_png(target)

    def broken(self, *a, **k):
        raise RuntimeError("disk full")
    before = target.read_bytes()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        viz.plot_history([{"epoch": 1, "loss": 2.0}], target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["h.png"]


def test_the_users_backend_is_left_alone(tmp_path):
    code = ("import sys, matplotlib; matplotlib.use('svg'); from pylenet import viz; "
            "viz.plot_history([{'epoch': 1, 'loss': 1.0}], 'h.png'); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "False"]  # drawn with Agg all the same, and never through pyplot
    read_png(tmp_path / "h.png")


# ----------------------------------------------------------------------------- command line
def test_cli_plot_commands(tmp_path, trained, monkeypatch, capsys):
    model, history, data, ckpt = trained
    record = {"args": {"model": "lenet5", "dataset": "mnist"}, "history": history.to_dict()}
    (tmp_path / "h.json").write_text(json.dumps(record))
    r = cli(tmp_path, "plot", "history", "h.json", "h.png")
    assert r.returncode == 0 and "wrote h.png" in r.stdout, r.stderr
    read_png(tmp_path / "h.png")
    r = cli(tmp_path, "plot", "filters", ckpt, "f.png", "--layer", "3")
    assert r.returncode == 0 and "layer 3" in r.stdout, r.stderr
    read_png(tmp_path / "f.png")
    # maps of a PNG and of an .npy: read as predict reads them, normalised with the checkpoint's
    pixels = np.round((data.images[0, 0] * data.std + data.mean) * 255).clip(0, 255).astype(np.uint8)
    write_png(tmp_path / "d.png", pixels)
    np.save(tmp_path / "d.npy", pixels)
    for image in ("d.png", "d.npy"):
        r = cli(tmp_path, "plot", "maps", ckpt, image, f"{image}.png")
        assert r.returncode == 0, r.stderr
        read_png(tmp_path / f"{image}.png", (600, 900))
    bad = [(("plot", "filters", ckpt, "x.png", "--layer", "fc"), "has no layer 'fc'"),
           (("plot", "filters", tmp_path / "missing.npz", "x.png"), "no such checkpoint"),
           (("plot", "history", "missing.json", "x.png"), "no such history file"),
           (("plot", "maps", ckpt, "missing.png", "x.png"), "no such image file"),
           (("plot", "filters", ckpt, tmp_path / "no" / "x.png"), "does not exist"),
           (("plot", "confusion", ckpt, "x.svg"), "must end in .png"),
           (("plot", "worst", ckpt, "x.png", "-n", "0"), "-n must be at least 1"),
           (("plot", "confusion", ckpt, "x.png", "--data", tmp_path / "nodata"), "no such folder")]
    from pylenet.__main__ import main
    monkeypatch.chdir(tmp_path)
    for args, needle in bad:  # in this process: the same error path as above, without a process each
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("pylenet: error:") and needle in err, (args, err)
    assert not (tmp_path / "x.png").exists()


@needs_mnist
def test_cli_plot_on_the_test_split(tmp_path, trained):
    model, _, _, ckpt = trained
    r = cli(tmp_path, "plot", "confusion", ckpt, "c.png")
    assert r.returncode == 0, r.stderr
    acc = pylenet.evaluate(model, pylenet.datasets.mnist(data_root(), train=False, download=False))["accuracy"]
    assert f"(10000 images, accuracy {acc:.2%})" in r.stdout
    read_png(tmp_path / "c.png", (500, 500))
    r = cli(tmp_path, "plot", "worst", ckpt, "w.png", "-n", "9")
    assert r.returncode == 0 and "the 9 highest-loss mnist test images" in r.stdout, r.stderr
    read_png(tmp_path / "w.png")
    r = cli(tmp_path, "plot", "maps", ckpt, "test:0", "m.png")
    assert r.returncode == 0, r.stderr
    read_png(tmp_path / "m.png", (600, 900))
    assert_clean_failure(cli(tmp_path, "plot", "maps", ckpt, "test:10000", "m2.png"), "has 10000 images")


@needs_mnist
def test_train_plot_draws_the_curves_after_every_epoch(tmp_path):
    base = ["train", "--limit", "256", "--quiet", "--plot", "pics"]
    assert_clean_failure(cli(tmp_path, *base, "--epochs", "1"), "--plot pics: no such folder")
    assert not list(tmp_path.iterdir())
    (tmp_path / "pics").mkdir()
    r = cli(tmp_path, *base, "--epochs", "2", "--save", "a.npz")
    assert r.returncode == 0, r.stderr
    assert "pics/history.png" in r.stdout
    read_png(tmp_path / "pics" / "history.png")
    assert os.listdir(tmp_path / "pics") == ["history.png"]
    # A resumed run draws the earlier epochs too (read here from the checkpoint's history).
    r = cli(tmp_path, *base, "--epochs", "3", "--save", "a.npz", "--resume", "a.npz", "--history", "h.json")
    assert r.returncode == 0, r.stderr
    records = json.loads((tmp_path / "h.json").read_text())["history"]["epochs"]
    assert [e["epoch"] for e in records] == [1, 2, 3]
    viz.plot_history({"args": {"model": "lenet5", "dataset": "mnist"}, "history": {"epochs": records}},
                     tmp_path / "want.png")
    assert (read_png(tmp_path / "pics" / "history.png") == read_png(tmp_path / "want.png")).all()


@needs_mnist
def test_train_plot_failures_do_not_lose_an_epoch(tmp_path, monkeypatch, capsys):
    """A picture that cannot be written is a warning; Ctrl-C while it is drawn stops training
    once that epoch is in the checkpoint (on_epoch runs before the checkpoint is written)."""
    from pylenet.__main__ import main
    from pylenet.checkpoint import read_extra
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYLENET_DATA", str(data_root()))
    os.mkdir("pics")
    base = ["train", "--limit", "128", "--quiet", "--plot", "pics", "--epochs", "2"]

    def disk_full(*a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(viz, "plot_history", disk_full)
    assert main(base + ["--save", "a.npz"]) == 0
    err = capsys.readouterr().err
    assert err.count("pylenet: warning: could not draw pics/history.png: No space left on device") == 2
    assert read_extra("a.npz")["train_state"]["epoch"] == 2

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(viz, "plot_history", ctrl_c)
    assert main(base + ["--save", "b.npz"]) == 130
    assert "epoch 1 is saved in b.npz" in capsys.readouterr().err
    assert read_extra("b.npz")["train_state"]["epoch"] == 1
