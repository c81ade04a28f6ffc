"""ONNX export (issue 14): every traced model becomes an ONNX model that onnxruntime runs with
the outputs of model(x), at any batch size."""
import json
import sys

import numpy as np
import pytest

import pylenet
import pylenet.functional as F
from pylenet import models, nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from pylenet import onnx as plonnx  # noqa: E402


def run_ort(path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def assert_same(got, want):
    """<= 1e-5 relative to the output's scale (float32 sums in another order differ by ~1e-7)."""
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def batch(n, shape=(1, 28, 28), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic", "lenet_bn", "cudnn_lenet", "lenet", "mnist_net"])
def test_built_in_models_match_at_any_batch_size(tmp_path, name):
    m = models.create(name, seed=3)
    m.eval()
    path = tmp_path / f"{name}.onnx"
    plonnx.export(m, path)
    for n in (1, 7, 64, 256):
        x = batch(n, seed=n)
        assert_same(run_ort(path, x), m(x))


class Everything(nn.Module):
    """Each op the exporter maps, in one network: residual add, concat, batch norm (2d and 1d,
    with and without affine), dropout, every activation, both poolings with padding, strided
    and bias-free convolutions, view/flatten, softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.branch = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.down = nn.Conv2d(12, 8, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.bn1 = nn.BatchNorm1d(32, affine=False)
        self.act = nn.LeakyReLU(0.2)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = y + self.branch(y)                           # residual
        y = F.cat([F.tanh(y), F.sigmoid(y)], 1)          # along channels
        y = self.pool(self.down(y))
        y = self.avg(y)
        y = self.drop(y.view(y.size(0), -1))
        y = self.act(self.bn1(self.fc(y)))
        return F.softmax(self.out(y), 1)


def _with_statistics(m):
    """Running statistics as training leaves them (not the initial 0 and 1)."""
    rng = np.random.default_rng(1)
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape).astype(np.float32)
    return m


def test_every_op_matches(tmp_path):
    pylenet.manual_seed(5)
    m = _with_statistics(Everything())
    m.eval()
    plonnx.export(m, tmp_path / "e.onnx", input_shape=(1, 28, 28))
    for n in (1, 5, 64):
        x = batch(n, seed=n)
        assert_same(run_ort(tmp_path / "e.onnx", x), m(x))


def _tiny_data(n=256):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


class ResNetlet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(F.relu(y + self.conv2(y)), 2)
        return F.log_softmax(self.fc(y.flatten(1)), 1)


def test_trained_model_and_its_loaded_checkpoint_export_alike(tmp_path):
    pylenet.manual_seed(2)
    m = ResNetlet()
    pylenet.train(m, _tiny_data(), epochs=1, batch_size=32, loss=F.nll_loss, progress=False)
    assert not np.allclose(m.bn1.running_mean, 0)  # the statistics moved
    m.normalization = (0.1307, 0.3081)
    m.eval()
    x = batch(9)
    plonnx.export(m, tmp_path / "m.onnx")  # the input shape from the training call
    assert_same(run_ort(tmp_path / "m.onnx", x), m(x))
    m.save(tmp_path / "m.npz")
    loaded = pylenet.load(tmp_path / "m.npz")  # a GraphModule: the class is not known to the file
    assert type(loaded).__name__ == "GraphModule"
    loaded.eval()
    plonnx.export(loaded, tmp_path / "g.onnx")
    assert_same(run_ort(tmp_path / "g.onnx", x), m(x))


def test_the_file_is_a_checked_standard_model(tmp_path):
    m = models.lenet()
    proto = plonnx.export(m, tmp_path / "l.onnx")
    loaded = onnx.load(str(tmp_path / "l.onnx"))
    assert loaded == proto
    onnx.checker.check_model(loaded, full_check=True)
    assert [o.version for o in loaded.opset_import if o.domain == ""] == [plonnx.DEFAULT_OPSET]
    (inp,), (out,) = loaded.graph.input, loaded.graph.output
    assert inp.name == "input" and out.name == "output"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 10]
    inits = {t.name for t in loaded.graph.initializer}
    assert set(m.state_dict()) <= inits  # parameters under their state_dict names
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "conv1.weight")),
        m.conv1.weight)
    props = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(props["normalization"]) == pytest.approx([0.1307, 0.3081])
    assert json.loads(props["input_shape"]) == [1, 28, 28]
    assert [n.op_type for n in loaded.graph.node] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool",
                                                      "Reshape", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]


def test_dropout_is_removed_and_an_older_opset_works(tmp_path):
    m = models.mnist_net(seed=1)
    m.train()  # export traces in evaluation mode whatever the model's mode, and restores it
    proto = plonnx.export(m, tmp_path / "n.onnx", opset=13)
    assert m.training
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    m.eval()
    x = batch(4)
    assert_same(run_ort(tmp_path / "n.onnx", x), m(x))


def test_refusals_are_clear_and_keep_the_old_file(tmp_path):
    path = tmp_path / "keep.onnx"
    plonnx.export(models.lenet5(), path)
    before = path.read_bytes()

    class NoStats(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(1, track_running_stats=False)

        def forward(self, x):
            return self.bn(x).flatten(1)

    with pytest.raises(ValueError, match="running statistics"):
        plonnx.export(NoStats(), path, input_shape=(1, 4, 4))
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))

    class Shapeless(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match="input_shape"):
        plonnx.export(Shapeless(), tmp_path / "s.onnx")
    with pytest.raises(ValueError, match="opset"):
        plonnx.export(models.lenet5(), tmp_path / "o.onnx", opset=9)
    with pytest.raises(TypeError, match="pylenet Module"):
        plonnx.export(object(), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="input"):
        plonnx.export(models.lenet5(), tmp_path / "x.onnx", input_shape=(1, 0, 28))
    assert not (tmp_path / "x.onnx").exists()


def test_without_onnx_the_call_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "pylenet\[onnx\]"'):
        plonnx.export(models.lenet5(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_export_onnx_command(tmp_path):
    import subprocess
    m = models.cudnn_lenet(seed=4)
    m.save(tmp_path / "c.npz")
    cmd = [sys.executable, "-m", "pylenet", "export-onnx"]
    r = subprocess.run(cmd + ["c.npz", "c.onnx"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "input 'input' (batch, 1, 28, 28)" in r.stdout and "normalised with mean 0.1307" in r.stdout
    x = batch(3)
    m.eval()
    assert_same(run_ort(tmp_path / "c.onnx", x), m(x))
    before = (tmp_path / "c.onnx").read_bytes()
    r = subprocess.run(cmd + ["c.npz", "c.onnx"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--force" in r.stderr and (tmp_path / "c.onnx").read_bytes() == before
    r = subprocess.run(cmd + ["c.npz", "c.onnx", "--force", "--opset", "13"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "opset 13" in r.stdout
    for args, needle in ((["missing.npz", "x.onnx"], "missing.npz"), (["c.npz", "no/dir/x.onnx"], "does not exist"),
                         (["c.npz", "y.onnx", "--opset", "7"], "opset")):
        r = subprocess.run(cmd + args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.startswith("pylenet: error:") and needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
