"""The command line, run as a user would: ``python -m pylenet ...`` in a scratch folder."""
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import pylenet
import pylenet.cudnn_format
from pylenet.images import load_image


def data_root():
    env = os.environ.get("PYLENET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


HAVE_MNIST = all((data_root() / "mnist" / f).exists() for f in (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz"))
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST not found under {data_root()} (set $PYLENET_DATA)")


def cli(cwd, *args, timeout=300):
    env = dict(os.environ, PYLENET_DATA=str(data_root()))
    return subprocess.run([sys.executable, "-m", "pylenet", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_failure(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("pylenet: error:"), r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def write_png(path, pixels):
    """Minimal PNG writer: 8-bit grey (H, W) or RGB (H, W, 3), filter 0 on every row."""
    pixels = np.asarray(pixels, np.uint8)
    h, w = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- info / summary
def test_info(tmp_path):
    r = cli(tmp_path, "info")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"pylenet {pylenet.__version__}")
    for word in ("compiler", "simd", "threads", "cuda"):
        assert word in r.stdout
    r = cli(tmp_path, "info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == pylenet.__version__
    assert info["simd"]["compiled"] == pylenet.build_info()["simd"]["compiled"]


def test_summary(tmp_path):
    r = cli(tmp_path, "summary", "--model", "cudnn_lenet")
    assert r.returncode == 0, r.stderr
    assert "431,080" in r.stdout and "memory plan" in r.stdout
    assert "(64, 20, 24, 24)" in r.stdout and "(64, 10)" in r.stdout
    r = cli(tmp_path, "summary", "--model", "lenet5", "--batch-size", "8")
    assert r.returncode == 0 and "61,706" in r.stdout and "(8, 6, 28, 28)" in r.stdout
    assert_clean_failure(cli(tmp_path, "summary", "--batch-size", "0"))


def test_usage_errors(tmp_path):
    r = cli(tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = cli(tmp_path, "summary", "--model", "alexnet")
    assert r.returncode == 2 and "invalid choice" in r.stderr


# ----------------------------------------------------------------------------- train / eval / predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(f"MNIST not found under {data_root()}")
    cwd = tmp_path_factory.mktemp("cli")
    r = cli(cwd, "train", "--limit", "2000", "--epochs", "1", "--save", "m.npz", "--history", "h.json", "--quiet")
    return cwd, r


@needs_mnist
def test_train(trained):
    cwd, r = trained
    assert r.returncode == 0, r.stderr
    assert (cwd / "m.npz").exists() and not [p for p in os.listdir(cwd) if p.endswith(".tmp")]
    assert "(2000 images)" in r.stdout and "epoch  1/1" in r.stdout
    acc = float(re.search(r"test accuracy (\d+\.\d+)%", r.stdout).group(1))
    assert acc >= 60.0, r.stdout  # 2000 images, one epoch (32 steps): ~73%; untrained ~10%
    hist = json.loads((cwd / "h.json").read_text())
    assert hist["args"]["limit"] == 2000 and len(hist["history"]["epochs"]) == 1
    assert hist["history"]["epochs"][0]["eval_accuracy"] == pytest.approx(acc / 100, abs=5e-5)
    m = pylenet.load(cwd / "m.npz")
    assert m.name == "lenet5" and m.normalization == pytest.approx((0.1307, 0.3081))
    _, opt = pylenet.load(cwd / "m.npz", return_optimizer=True)
    assert opt.config() == {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    assert opt.state["steps"] == 32  # ceil(2000 / 64)


@needs_mnist
def test_eval_matches_train(trained):
    cwd, r_train = trained
    r = cli(cwd, "eval", "m.npz")
    assert r.returncode == 0, r.stderr
    train_acc = re.search(r"test accuracy (\d+\.\d+%)", r_train.stdout).group(1)
    assert f"mnist test accuracy {train_acc}" in r.stdout and "(10000 images)" in r.stdout


@needs_mnist
def test_predict_png_and_npy(trained):
    cwd, _ = trained
    test = pylenet.datasets.mnist(data_root(), train=False, normalize=False, download=False)
    pix = [np.round(test.images[i, 0] * 255).astype(np.uint8) for i in range(3)]
    write_png(cwd / "a.png", pix[0])                                   # 28x28 grey, as MNIST
    np.save(cwd / "b.npy", pix[1])                                     # 28x28 uint8 array
    big = np.kron(255 - pix[2], np.ones((4, 3), np.uint8))[6:106, 2:82]  # 100x80, dark digit on white
    write_png(cwd / "c.png", np.stack([big] * 3, axis=-1))              # as RGB
    r = cli(cwd, "predict", "m.npz", "a.png", "b.npy", "c.png")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    got = []
    for line, name in zip(lines, ("a.png", "b.npy", "c.png")):
        m = re.fullmatch(rf"{re.escape(name)}: (\d) \(p=(\d\.\d+)\)", line)
        assert m, line
        assert 0.0 < float(m.group(2)) <= 1.0
        got.append(int(m.group(1)))
    # The same model in this process, on the same images, gives the same classes.
    model = pylenet.load(cwd / "m.npz")
    mean, std = model.normalization
    x = (np.stack([load_image(cwd / n) for n in ("a.png", "b.npy", "c.png")]) - mean) / std
    assert got == model.predict(x).tolist()
    np.testing.assert_allclose(load_image(cwd / "b.npy"), pix[1] / 255.0, atol=1e-6)  # an array: as it is


@needs_mnist
def test_predict_and_eval_bad_paths(trained):
    cwd, _ = trained
    (cwd / "notes.txt").write_text("not a checkpoint")
    (cwd / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    assert_clean_failure(cli(cwd, "eval", "missing.npz"), "missing.npz")
    assert_clean_failure(cli(cwd, "eval", "notes.txt"), "notes.txt")
    assert_clean_failure(cli(cwd, "predict", "missing.npz", "a.png"), "missing.npz")
    assert_clean_failure(cli(cwd, "predict", "m.npz", "nothere.png"), "nothere.png")
    assert_clean_failure(cli(cwd, "predict", "m.npz", "broken.png"), "broken.png")
    assert_clean_failure(cli(cwd, "predict", "m.npz", "notes.txt"))
    os.makedirs(cwd / "adir", exist_ok=True)
    assert_clean_failure(cli(cwd, "predict", "m.npz", "adir"))


def test_predict_and_eval_refuse_what_would_print_nan(tmp_path):
    """issue 13: absurd (finite) weights made predict print '0 (p=nan)'; odd metadata made
    eval fail with AttributeError. Both are clean errors now."""
    m = pylenet.models.lenet5()
    m[0].weight[...] = 3e38
    m.save(tmp_path / "absurd.npz")
    np.save(tmp_path / "x.npy", np.full((28, 28), 0.7, np.float32))
    assert_clean_failure(cli(tmp_path, "predict", "absurd.npz", "x.npy"), "non-finite")
    pylenet.models.lenet5().save(tmp_path / "odd.npz", extra={"dataset": ["not", "a", "name"]})
    assert_clean_failure(cli(tmp_path, "eval", "odd.npz"), "--dataset")


@needs_mnist
def test_train_bad_arguments(tmp_path):
    assert_clean_failure(cli(tmp_path, "train", "--limit", "100", "--epochs", "0", "--quiet"), "epochs")
    assert_clean_failure(cli(tmp_path, "train", "--limit", "100", "--lr", "-1", "--quiet"))
    assert_clean_failure(cli(tmp_path, "train", "--limit", "100000", "--quiet"))
    assert not list(tmp_path.glob("*.npz"))


def test_cudnn_export_import_commands(tmp_path):
    src = pylenet.models.cudnn_lenet(seed=8)
    src.save(tmp_path / "c.npz")
    r = cli(tmp_path, "export-cudnn", "c.npz", "bins")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "bins")) == sorted(pylenet.cudnn_format.CUDNN_FILES)
    r = cli(tmp_path, "import-cudnn", "bins", "--save", "back.npz")
    assert r.returncode == 0, r.stderr
    back = pylenet.load(tmp_path / "back.npz")
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    pylenet.models.lenet5().save(tmp_path / "l.npz")
    assert_clean_failure(cli(tmp_path, "export-cudnn", "l.npz", "bins2"), "cudnn_lenet")
    assert_clean_failure(cli(tmp_path, "import-cudnn", "nowhere"), "nowhere")


def test_device_cuda_where_it_cannot_run_is_a_clean_error(tmp_path):
    import pylenet
    if pylenet.cuda.is_available():
        pytest.skip("a GPU is usable here")
    assert_clean_failure(cli(tmp_path, "bench", "--device", "cuda"), "CUDA")
    assert_clean_failure(cli(tmp_path, "train", "--device", "cuda", "--epochs", "1", "--limit", "64"), "CUDA")
    assert_clean_failure(cli(tmp_path, "train", "--device", "tpu", "--epochs", "1", "--limit", "64"), "device")


def test_default_learning_rates():
    # One SGD rate for every model made cudnn_lenet unstable (it diverged in a 10-epoch run):
    # it has its own, the cudnn-training sample's 0.01; an explicit --lr always wins.
    from pylenet.__main__ import build_parser, default_lr

    assert default_lr("sgd", "lenet5") == 0.05
    assert default_lr("sgd", "cudnn_lenet") == 0.01
    assert default_lr("adam", "cudnn_lenet") == 1e-3
    assert default_lr("adadelta", "lenet5") == 1.0
    args = build_parser().parse_args(["train", "--model", "cudnn_lenet", "--lr", "0.2"])
    assert args.lr == 0.2


@needs_mnist
def test_ctrl_c_keeps_the_finished_epochs_and_resume_continues_exactly(tmp_path):
    """issue 15: Ctrl-C threw the finished epochs away and wrote no history; there was no
    --resume. Now every finished epoch is in the --save file, and --resume continues it."""
    import signal
    env = dict(os.environ, PYLENET_DATA=str(data_root()))
    args = [sys.executable, "-m", "pylenet", "train", "--limit", "1000", "--epochs", "40", "--quiet", "--save", "m.npz",
            "--history", "h.json", "--schedule", "step"]
    p = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("epoch  2/40"):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)
    assert "is saved in m.npz" in err and "Traceback" not in err, err
    saved = json.load(open(tmp_path / "h.json"))["history"]["epochs"]
    done = saved[-1]["epoch"]
    assert done >= 2 and [r["epoch"] for r in saved] == list(range(1, done + 1))
    m = pylenet.load(tmp_path / "m.npz")
    assert m is not None
    # Resume to done + 1 epochs, and compare with an uninterrupted run of the same length.
    r = cli(tmp_path, "train", "--limit", "1000", "--epochs", done + 1, "--quiet", "--save", "m.npz", "--resume",
            "m.npz", "--schedule", "step")
    assert r.returncode == 0, r.stderr
    r = cli(tmp_path, "train", "--limit", "1000", "--epochs", done + 1, "--quiet", "--save", "ref.npz",
            "--schedule", "step")
    assert r.returncode == 0, r.stderr
    a, b = pylenet.load(tmp_path / "m.npz").state_dict(), pylenet.load(tmp_path / "ref.npz").state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_version(tmp_path):
    r = cli(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"pylenet {pylenet.__version__}"


@needs_mnist
def test_train_refuses_before_any_work(tmp_path):
    """issue 15: each of these was accepted (or failed only after the 'training ...' header)."""
    base = ["train", "--limit", "100", "--epochs", "1", "--quiet"]
    cases = [
        (["--data", tmp_path / "nonexistent"], "no such folder"),
        (["--save", tmp_path / "no" / "dir" / "x.npz"], "does not exist"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--resume", "missing.npz"], "no such checkpoint"),
        (["--history", tmp_path / "no" / "h.json"], "does not exist"),
    ]
    for extra, needle in cases:
        r = cli(tmp_path, *base, *extra)
        assert_clean_failure(r, needle)
        assert "training" not in r.stdout, r.stdout
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob("*.npz"))
    # The default save path is not overwritten without --force.
    assert cli(tmp_path, *base).returncode == 0
    before = (tmp_path / "lenet5-mnist.npz").read_bytes()
    assert_clean_failure(cli(tmp_path, *base, "--seed", "1"), "--force")
    assert (tmp_path / "lenet5-mnist.npz").read_bytes() == before
    assert cli(tmp_path, *base, "--seed", "1", "--force").returncode == 0
    assert (tmp_path / "lenet5-mnist.npz").read_bytes() != before


def test_eval_without_data_names_the_flag(tmp_path):
    """issue 15: 'pylenet eval' without data said "pass root=<folder>", not --data."""
    pylenet.models.lenet5().save(tmp_path / "m.npz")
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYLENET_DATA"}
    env["PYLENET_MIRRORS"] = "http://127.0.0.1:9/"  # nothing listens there: the download fails at once
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "pylenet", "eval", "m.npz", "--data", "empty"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "pylenet: error:" in r.stderr, r.stderr
    assert "--data DIR" in r.stderr, r.stderr  # (after a line saying it tried to download)
    r = subprocess.run([sys.executable, "-m", "pylenet", "eval", "m.npz", "--data", "none"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert_clean_failure(r, "no such folder")


# ----------------------------------------------------------------------------- issue 15: the small CLI gaps
def test_summary_reads_checkpoints_shows_the_training_optimizer_and_cuts_no_word(tmp_path):
    from pylenet.__main__ import recipe_optimizer
    r = cli(tmp_path, "summary", "--model", "lenet5")
    assert r.returncode == 0, r.stderr
    # the optimizer `pylenet train --model lenet5` uses, not another one
    assert f"optimizer {recipe_optimizer('lenet5')!r}" in r.stdout.splitlines()[0]
    assert "nesterov=True" in r.stdout and "weight_decay=0.0005" in r.stdout
    assert "…" not in r.stdout
    lines = r.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "MaxPool2d(" in line)  # wrapped at a comma, whole
    assert "2: MaxPool2d(kernel_size=2, stride=2, padding=0," in lines[first]
    assert lines[first + 1].strip() == "dilation=1, ceil_mode=False)"
    r = cli(tmp_path, "summary", "mnist_net")  # the model as a positional argument
    assert r.returncode == 0 and "Adadelta(lr=1.0" in r.stdout
    assert "models.py:" in r.stdout and "runpy" not in r.stdout  # functional ops name the model's own line
    m = pylenet.models.cudnn_lenet(seed=1)
    m.save(tmp_path / "c.npz", optimizer=pylenet.optim.Adam(2e-3))
    r = cli(tmp_path, "summary", "c.npz", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "431,080" in r.stdout and "(4, 20, 24, 24)" in r.stdout and "Adam(lr=0.002" in r.stdout
    assert_clean_failure(cli(tmp_path, "summary", "missing.npz"), "missing.npz")
    assert_clean_failure(cli(tmp_path, "summary", "alexnet"), "neither a model")
    assert_clean_failure(cli(tmp_path, "summary", "lenet5", "--model", "lenet5"), "not both")


def test_bench_prints_only_unless_out_is_given(tmp_path):
    r = cli(tmp_path, "bench", "--no-torch", "--steps", "1", "--repeats", "1", "--models", "lenet5", "--batches", "8",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "lenet5" in r.stdout and "not saved" in r.stdout
    assert os.listdir(tmp_path) == []  # no benchmarks/results/ made in whatever folder it ran in
    r = cli(tmp_path, "bench", "--no-torch", "--out", tmp_path / "no" / "r.json")
    assert r.returncode == 2 and "does not exist" in r.stderr and "GEMM" not in r.stdout  # refused before the run
    assert not (tmp_path / "no").exists()


def test_predict_reports_every_file_and_reads_npy_batches(tmp_path):
    model = pylenet.models.lenet5(seed=3)
    model.normalization = (0.1307, 0.3081)
    model.save(tmp_path / "m.npz")
    rng = np.random.default_rng(0)
    batch = rng.random((5, 1, 28, 28)).astype(np.float32) * 0.4  # dark background, as MNIST
    np.save(tmp_path / "batch.npy", batch)
    np.save(tmp_path / "hw.npy", (batch[:3, 0] * 255).astype(np.uint8))  # (N, H, W) uint8
    np.save(tmp_path / "one.npy", batch[0, 0])
    np.save(tmp_path / "odd.npy", np.zeros((2, 5, 28, 28)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    r = cli(tmp_path, "predict", "m.npz", "batch.npy", "missing.png", "one.npy", "broken.png", "hw.npy", "odd.npy")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    names = [line.split(":")[0] for line in r.stdout.splitlines()]
    assert names == [f"batch.npy[{i}]" for i in range(5)] + ["one.npy"] + [f"hw.npy[{i}]" for i in range(3)]
    errors = [line for line in r.stderr.splitlines() if line.startswith("pylenet: error:")]
    assert len(errors) == 3, r.stderr
    assert "missing.png: No such file" in errors[0] and "broken.png" in errors[1]
    assert "odd.npy" in errors[2] and "(2, 5, 28, 28)" in errors[2] and "(N, C, H, W)" in errors[2]
    assert "3 of 6 files could not be read" in r.stderr
    # the classes are the model's on the same pixels
    got = [int(line.split(": ")[1].split()[0]) for line in r.stdout.splitlines()]
    x = (batch - 0.1307) / 0.3081
    assert got[:5] == model.predict(x).tolist() and got[5] == got[0]
    r = cli(tmp_path, "predict", "m.npz", "batch.npy", "one.npy")
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout.splitlines()) == 6


@needs_mnist
def test_one_line_per_epoch_on_a_terminal(tmp_path):
    """issue 15: on a terminal each epoch printed two different summary lines (train's on stderr
    and the CLI's on stdout). Now the bars (tqdm) have the epoch's one line written above them;
    with output going to a file, that file gets the line instead."""
    import pty
    env = dict(os.environ, PYLENET_DATA=str(data_root()))
    args = [sys.executable, "-m", "pylenet", "train", "--limit", "300", "--epochs", "2", "--save", "m.npz"]
    import fcntl
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size
    p = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert p.wait(timeout=120) == 0
    screen = b"".join(chunks).decode()
    assert "img/s" in screen and "training: 100%" in screen  # tqdm's bars were drawn
    for e in (1, 2):
        assert len(re.findall(rf"epoch  {e}/2: loss", screen)) == 1, screen
    # stdout to a file (stderr still a terminal): the file has each epoch's line once
    leader, follower = pty.openpty()
    with open(tmp_path / "log.txt", "w") as log:
        p = subprocess.Popen(args + ["--force"], cwd=tmp_path, env=env, stdout=log, stderr=follower,
                             stdin=subprocess.DEVNULL)
        os.close(follower)
        while True:
            try:
                if not os.read(leader, 4096):
                    break
            except OSError:
                break
        os.close(leader)
        assert p.wait(timeout=120) == 0
    log = (tmp_path / "log.txt").read_text()
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch")] == ["epoch  1/2", "epoch  2/2"]
