"""The runtime around the executor: where parameters live, compiled-model caches, threads,
batch-dependent layers, rejected steps, and the memory plan's in-place reuse."""
import threading

import numpy as np
import pytest

import pylenet
import pylenet.functional as F
import pylenet.nn as nn
from pylenet import models, optim, runtime


def batch(rng, n=16):
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


# ----------------------------------------------------------------------------- parameters
def test_a_new_head_after_construction_keeps_parameter_identity(rng):
    """Fine-tuning: replace the last layer, then give the optimizer model.parameters()."""
    m = models.lenet()
    m.fc3 = nn.Linear(84, 5)
    before = [id(p) for p in m.parameters()]
    opt = optim.SGD(m.parameters(), lr=0.1)
    step = pylenet.compile(m, optimizer=opt, batch_size=16)
    x, _ = batch(rng)
    w = m.fc3.weight.copy()
    step(x, rng.integers(0, 5, 16))
    assert [id(p) for p in m.parameters()] == before  # nothing was repacked under the optimizer
    assert not np.array_equal(w, m.fc3.weight)


def test_slices_and_containers_leave_a_trained_model_alone(rng):
    m = models.lenet5()
    params = list(m.parameters())  # held, as an optimizer or a user's variable holds them
    values = [p.copy() for p in params]
    first = m[:3]  # a Sequential of m's first layers
    both = nn.Sequential(m, nn.Linear(10, 2))
    assert all(a is b for a, b in zip(m.parameters(), params))
    assert first[0].weight is m[0].weight and both[0][0].weight is m[0].weight
    del params
    # Parameters nobody else holds may move into the container's buffer; values stay.
    again = nn.Sequential(m, nn.Linear(10, 2))
    assert all(np.array_equal(a, b) for a, b in zip(m.parameters(), values))
    assert again[0][0].weight is m[0].weight
    ids = [id(p) for p in m.parameters()]
    opt = optim.SGD(m.parameters(), lr=0.1)
    x, y = batch(rng)
    seen = []

    def on_epoch(r):
        seen.append(m[:1])  # model surgery during training must not detach the model

    before = m[0].weight.copy()
    pylenet.train(m, (x, y), epochs=2, batch_size=8, optimizer=opt, progress=False, on_epoch=on_epoch)
    assert [id(p) for p in m.parameters()] == ids
    after_one = m[0].weight.copy()
    pylenet.train(m, (x, y), epochs=1, batch_size=8, optimizer=opt, progress=False)
    assert not np.array_equal(before, after_one) and not np.array_equal(after_one, m[0].weight)


def test_packing_at_construction_gives_one_buffer():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    stores = {id(p._store) for p in m.parameters()}
    assert len(stores) == 1
    assert next(iter(m.parameters()))._store.size == m.num_parameters()


# ----------------------------------------------------------------------------- threads
def test_one_model_from_several_threads(rng):
    m = models.lenet5(seed=2).eval()
    xs = [rng.standard_normal((40, 1, 28, 28)).astype(np.float32) for _ in range(6)]
    ref = [m(x) for x in xs]
    out, errors = [None] * 24, []

    def work(i):
        try:
            for _ in range(3):
                out[i] = m(xs[i % 6])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, o in enumerate(out):
        np.testing.assert_array_equal(o, ref[i % 6])


def _in_threads(n, fn):
    errors = []

    def work(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("name", ["cudnn_lenet", "mnist_net"])
def test_heuristic_applies_per_call(rng, name):
    """The rule picks per chunk by its images, except where an inference executor keeps the
    filter prepared (then every call runs the chunk's choice: cudnn_lenet's conv2 on winograd
    for one image too). The answers agree; each path stays bit-identical with itself."""
    m = models.create(name, seed=0)
    m.eval()
    x = rng.standard_normal((40, 1, 28, 28)).astype(np.float32)
    batch = m(x)
    singles = np.concatenate([m(x[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(singles, batch[:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([m(x[i:i + 1]) for i in range(5)]), singles)
    np.testing.assert_array_equal(m(x), batch)
    last = m(x[:35])  # 32 + a chunk of 3: the short chunk takes the few-images choice
    np.testing.assert_allclose(last, batch[:35], rtol=1e-4, atol=1e-5)


def _conv_weights(m):
    return [p for name, p in m.named_parameters() if p.ndim == 4]


@pytest.mark.parametrize("name", ["cudnn_lenet", "lenet5"])
def test_inference_prepares_filters_once_and_sees_every_change(rng, name):
    """Inference executors keep winograd's transformed filter (cudnn_lenet conv2) and direct's
    transposed one (lenet5 conv2) between calls, in the memory plan. Before each call they
    compare the weights, bias and SIMD path with what they prepared from, so a write into a
    parameter, load_state_dict or set_simd gives exactly what a freshly built model gives."""
    m = models.create(name, seed=0).eval()
    x = rng.standard_normal((40, 1, 28, 28)).astype(np.float32)
    first = m(x)
    plan = runtime.inference_executor(m, (1, 28, 28), runtime.DEFAULT_INFERENCE_BATCH).memory_plan()
    assert plan["prepared"] > 0 and plan["total"] >= plan["prepared"]

    def fresh(inputs=x):
        f = models.create(name, seed=1).eval()
        f.load_state_dict(m.state_dict())
        return f(inputs)

    np.testing.assert_array_equal(m(x), first)
    for w in _conv_weights(m):  # in place, through the parameter's own array
        w[0, 0, 0, 0] += 1.0
        changed = m(x)
        assert not np.array_equal(changed, first)
        np.testing.assert_array_equal(changed, fresh())
    bias = [p for n, p in m.named_parameters() if n.endswith("bias") and p.ndim == 1][1]  # the second conv's
    bias[3] -= 0.5
    np.testing.assert_array_equal(m(x), fresh())
    np.testing.assert_array_equal(m(x[:1]), fresh(x[:1]))  # one image: the same prepared filters
    sd = models.create(name, seed=3).state_dict()
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m(x), fresh())
    before = pylenet.get_simd()
    try:
        for path in pylenet.available_simd() + (["avx512:8", "avx512:16"] if "avx512" in pylenet.available_simd() else []):
            pylenet.set_simd(path)
            np.testing.assert_array_equal(m(x), fresh(), err_msg=path)
    finally:
        pylenet.set_simd(before)


@pytest.mark.parametrize("name", ["cudnn_lenet", "lenet5", "mnist_net"])
def test_a_one_chunk_batch_gives_the_same_bits_on_any_thread_count(rng, name):
    """A batch of one chunk (one image, or up to 32) runs its large ops (cudnn_lenet's fc1 and
    winograd conv2) on all workers inside the op: the bits are those of one thread."""
    m = models.create(name, seed=0).eval()
    xs = [rng.standard_normal((n, 1, 28, 28)).astype(np.float32) for n in (1, 7, 32)]
    before = pylenet.get_num_threads()
    try:
        outs = {}
        for t in (1, 2, 3):
            pylenet.set_num_threads(t)
            outs[t] = [m(x) for x in xs]
        for t in (2, 3):
            for a, b in zip(outs[1], outs[t]):
                np.testing.assert_array_equal(a, b)
    finally:
        pylenet.set_num_threads(before)


@pytest.mark.parametrize("batch,chunk", [(1, 1), (8, 8), (16, 8), (24, 12), (32, 16), (48, 24), (64, 32), (100, 32)])
def test_a_small_batch_is_split_in_two_chunks_whatever_the_thread_count(rng, batch, chunk):
    """Chunks of 32 samples, a batch of up to 64 in two halves of at least 8, so that a batch of
    32 keeps two workers busy (in one chunk it trained at half the speed of a batch of 64). The
    size follows the compiled batch size only: training gives the same bits on 1, 2 and 3
    threads."""
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    before = pylenet.get_num_threads()
    try:
        runs = {}
        for t in (1, 2, 3):
            pylenet.set_num_threads(t)
            m = models.lenet5(seed=0)
            step = pylenet.compile(m, optimizer=optim.SGD(0.05, momentum=0.9), batch_size=batch)
            losses = [step(x, y) for _ in range(3)]
            assert step.executor(x.shape[1:]).chunk == chunk
            runs[t] = (losses, {k: v.copy() for k, v in m.state_dict().items()})
        for t in (2, 3):
            assert runs[t][0] == runs[1][0]
            for k, v in runs[1][1].items():
                np.testing.assert_array_equal(runs[t][1][k], v, err_msg=f"{k} on {t} threads")
    finally:
        pylenet.set_num_threads(before)


TINY, SMALL = np.float32(1e-20), np.float32(1e-25)  # TINY * TINY, TINY * SMALL: denormal float32s


@pytest.mark.parametrize("threads", [1, 2])
def test_steps_flush_denormals_and_leave_the_callers_mode_alone(threads):
    """Executor steps and forward passes flush denormals to zero on every worker (x86 takes a
    microcode assist per denormal: examples/mnist's net ran its third epoch 60 % slower than
    its first); eager ops, on any worker, and the calling thread's own arithmetic keep IEEE
    denormals. The products here are 1e-45, their sums about 1e-42."""
    assert TINY * TINY > 0  # this thread's mode before
    m = nn.Linear(2048, 64, bias=False)
    m.weight[...] = SMALL
    x = np.full((256, 2048), TINY, np.float32)  # eight chunks of a few microseconds: workers take some
    # (denormal arithmetic is slow where it is not flushed: the eager ops get small inputs)
    xc, wc = np.full((16, 8, 12, 12), TINY, np.float32), np.full((8, 8, 3, 3), SMALL, np.float32)
    before = pylenet.get_num_threads()
    try:
        pylenet.set_num_threads(threads, adaptive=False)  # every step on all the workers
        assert F.linear(x[:4], m.weight).min() > 0
        assert F.conv2d(xc, wc).min() > 0  # images split over the workers
        np.testing.assert_array_equal(m(x), 0.0)
        assert TINY * TINY > 0  # restored after the call
        step = pylenet.compile(m, optimizer=optim.SGD(0.0), loss=F.cross_entropy, batch_size=256)
        step(x, np.zeros(256, np.int64))
        assert TINY * TINY > 0
        assert F.conv2d(xc, wc).min() > 0  # whatever mode the pool's threads were started in
        np.testing.assert_array_equal(m(x), 0.0)
    finally:
        pylenet.set_num_threads(before, adaptive=True)


def test_a_progress_callback_runs_in_the_callers_float_mode(rng):
    """train_epoch calls back into Python between steps: the callback sees the user's IEEE
    mode, not the step's flushing one."""
    m = models.lenet5(seed=0)
    step = pylenet.compile(m, optimizer=optim.SGD(0.01), batch_size=16)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    ex = step.executor(x.shape[1:])
    seen = []

    def progress(done, total, stats):
        seen.append(float(TINY * TINY))
        return True

    ex.train_epoch(x, y, np.arange(64), 16, {"kind": "constant"}, 0, progress, 1)
    assert len(seen) == 4 and min(seen) > 0
    assert TINY * TINY > 0


class _ConvPool(nn.Module):
    """A 3x3 convolution wide enough for winograd, then ReLU and 2x2 max pooling (the ReLU
    runs after the pool, so the pool reads the convolution), optionally a second reader of
    the convolution's output, directly or through a view (then nothing may be folded)."""

    def __init__(self, twice=False, view=False):
        super().__init__()
        self.conv = nn.Conv2d(16, 24, 3)
        self.twice, self.view = twice, view

    def forward(self, x):
        y = self.conv(x)
        z = F.flatten(F.max_pool2d(F.relu(y), 2), 1)
        if self.view:  # the convolution's output also read through a view of it
            return F.cat([z, F.flatten(y, 1)], 1)
        return z + F.flatten(F.max_pool2d(y, 2), 1) if self.twice else z


@pytest.mark.parametrize("name,size,batch", [("mnist_net", 28, 70), ("cudnn_lenet", 28, 33), ("lenet5", 28, 9),
                                             ("mnist_net", 28, 1), ("cudnn_lenet", 28, 1), ("convpool", 27, 20),
                                             ("convpool", 26, 1), ("twice", 26, 5), ("view", 26, 5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_inference_folds_max_pooling_into_the_convolution_with_the_same_bits(rng, name, size, batch, threads):
    """CPU inference runs a 2x2 max pooling that alone reads a convolution inside the
    convolution's instruction: on winograd's output tiles in registers (mnist_net's and
    cudnn_lenet's second layers, the odd 25x25 map of convpool), through the convolution's own
    output otherwise (direct: lenet5, cudnn_lenet's conv1). Same bits as the two kernels
    (fuse=False), for ties too (zero inputs: every output is its bias)."""
    pylenet.manual_seed(0)
    m = {"convpool": lambda: _ConvPool(), "twice": lambda: _ConvPool(twice=True),
         "view": lambda: _ConvPool(view=True)}.get(name, lambda: models.create(name, seed=0))()
    m.eval()
    shape = (16, size, size) if name in ("convpool", "twice", "view") else (1, size, size)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    x[batch // 2] = 0.0
    before = pylenet.get_num_threads()
    try:
        pylenet.set_num_threads(threads)
        t = runtime.traced(m, shape, batch)
        fused = runtime.build_executor(m, t, capacity=batch)
        plain = runtime.build_executor(m, t, capacity=batch, fuse=False)
        ops = [d["op"] for d in fused.instructions()]
        folded = sum(op.endswith("+max_pool2d") for op in ops)
        assert folded == {"mnist_net": 1, "cudnn_lenet": 2, "lenet5": 2, "convpool": 1, "twice": 0, "view": 0}[name], ops
        assert not any(op.endswith("+max_pool2d") for op in (d["op"] for d in plain.instructions()))
        np.testing.assert_array_equal(fused.forward(x, None, True)[0], plain.forward(x, None, True)[0])
    finally:
        pylenet.set_num_threads(before)


@pytest.mark.parametrize("name,size,batch", [("mnist_net", 28, 70), ("cudnn_lenet", 28, 33), ("lenet5", 28, 9),
                                             ("convpool", 27, 20), ("convpool", 26, 1), ("twice", 26, 5),
                                             ("view", 26, 5)])
@pytest.mark.parametrize("conv_algo", ["heuristic", "winograd", "direct"])
@pytest.mark.parametrize("threads", [1, 2])
def test_training_folds_max_pooling_into_the_convolution_with_the_same_bits(rng, name, size, batch, conv_algo,
                                                                             threads):
    """CPU training folds the pooling too: on winograd the convolution's output is never
    written; otherwise (direct, or the heuristic's choice for a short last chunk) the pooling
    reads it. Either way its place then holds each window's winner, and the pooling's backward
    scatters by them, inside the convolution's one-pass backward where that follows (winograd:
    straight into its tiles). Two epochs with a partial batch of 3, ties (zero images) and an
    odd map: the same bits as the two kernels (fuse=False)."""
    shape = (16, size, size) if name in ("convpool", "twice", "view") else (1, size, size)
    n = 2 * batch + 3  # a last batch of 3: cudnn_lenet's 5x5 conv2 takes direct there (the heuristic)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    x[::3] = 0.0
    y = rng.integers(0, 10, n).astype(np.int64)
    before = pylenet.get_num_threads()
    try:
        pylenet.set_num_threads(threads)
        results = []
        for fuse in (False, True):
            pylenet.manual_seed(0)
            m = {"convpool": lambda: _ConvPool(), "twice": lambda: _ConvPool(twice=True),
                 "view": lambda: _ConvPool(view=True)}.get(name, lambda: models.create(name, seed=0))()
            loss = F.nll_loss if name == "mnist_net" else F.cross_entropy
            with runtime._EvalMode(m, training=True):
                t = runtime.traced(m, shape, batch, loss)
                ex = runtime.build_executor(m, t, capacity=batch, optimizer=optim.SGD(0.05, momentum=0.9), seed=5,
                                            fuse=fuse, conv_algo=conv_algo)
            ops = [i["op"] for i in ex.instructions()]
            it = 0
            for epoch in range(2):
                order = np.random.default_rng(epoch).permutation(n).astype(np.int64)
                stats, it = ex.train_epoch(x, y, order, batch, {"kind": "constant"}, it, None, 1)
            results.append(({k: np.array(v) for k, v in m.state_dict().items()}, stats, ops))
        (plain, s0, l0), (fused, s1, l1) = results
        folded = sum(op == "conv2d+max_pool2d" for op in l1)
        assert folded == {"mnist_net": 1, "cudnn_lenet": 2, "lenet5": 2, "convpool": 1, "twice": 0, "view": 0}[name], l1
        assert not any(op.endswith("+max_pool2d") for op in l0)
        # the pooling's backward joins a one-pass conv2d_backward (winograd) after it
        back = sum(op == "conv2d_backward+max_pool2d" for op in l1)
        assert back <= folded and (back == 1 if (name, conv_algo) == ("mnist_net", "heuristic") else True), l1
        assert len(l1) == len(l0) - folded - back
        assert s0 == s1
        for k in plain:
            np.testing.assert_array_equal(plain[k], fused[k], err_msg=k)
    finally:
        pylenet.set_num_threads(before)


@pytest.mark.parametrize("algo", ["im2col", "direct", "naive", "winograd", "auto"])
def test_eager_ops_from_several_threads(rng, algo):
    """Each thread has its own handle: no shared workspace is resized under another thread.
    With "auto" each handle times the algorithms itself and may pick another one than the
    main thread's (different last bits): a thread's calls then agree bit for bit with its own
    first call and closely with the main thread's."""
    xs = [rng.standard_normal((8, 3, 14 + 3 * i, 14 + 3 * i)).astype(np.float32) for i in range(4)]
    w = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    ref = [F.conv2d(x, w, algo=algo) for x in xs]
    wrong = []

    def work(i):
        own = F.conv2d(xs[i], w, algo=algo) if algo == "auto" else ref[i]
        if not np.allclose(own, ref[i], rtol=1e-4, atol=1e-4):
            wrong.append(i)
        pooled = F.max_pool2d(own, 2)
        for _ in range(15):
            y = F.conv2d(xs[i], w, algo=algo)
            if not (np.array_equal(y, own) and np.array_equal(F.max_pool2d(y, 2), pooled)):
                wrong.append(i)

    _in_threads(4, work)
    assert not wrong


def test_predict_and_evaluate_from_several_threads(rng):
    """issue 13: predict/evaluate shared one cached network and its buffers without a lock, and
    every result was wrong. Mixed sizes make the threads use and resize the same executors."""
    m = models.lenet5(seed=4)
    xs = [rng.standard_normal((n, 1, 28, 28)).astype(np.float32) for n in (1, 7, 64, 300)]
    ys = [rng.integers(0, 10, len(x)) for x in xs]
    ref_p = [m.predict(x, return_probs=True)[1] for x in xs]
    ref_e = [pylenet.evaluate(m, (x, y), batch_size=32) for x, y in zip(xs, ys)]
    wrong = []

    def work(i):
        for k in range(6):
            j = (i + k) % 4
            if not np.array_equal(m.predict(xs[j], return_probs=True)[1], ref_p[j]):
                wrong.append(("predict", j))
            if pylenet.evaluate(m, (xs[j], ys[j]), batch_size=32) != ref_e[j]:
                wrong.append(("evaluate", j))

    _in_threads(6, work)
    assert not wrong, wrong[:5]


def test_thread_count_is_process_wide():
    before = pylenet.get_num_threads()
    seen = []
    try:
        pylenet.set_num_threads(1)
        _in_threads(1, lambda i: seen.append(pylenet.get_num_threads()))
        _in_threads(1, lambda i: pylenet.set_num_threads(2))
        assert seen == [1] and pylenet.get_num_threads() == 2
        with pytest.raises(ValueError, match="1 to 4096"):
            pylenet.set_num_threads(0)
    finally:
        pylenet.set_num_threads(before)


# ----------------------------------------------------------------------------- batch-dependent forwards
class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.5, training=self.training)


def test_functional_dropout_in_a_training_forward_draws_new_masks():
    m = FunctionalDropout()
    x = np.ones((600, 8), np.float32)
    a, b = m(x) == 0, m(x) == 0
    assert not np.array_equal(a, b)                 # a new mask every call
    assert not np.array_equal(a[:256], a[256:512])  # one batch: rows past 256 do not repeat
    m.eval()
    np.testing.assert_array_equal(m(x), m.fc(x))


# ----------------------------------------------------------------------------- rejected steps
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.bn(self.fc(x)))


def test_a_rejected_step_changes_nothing(rng):
    m = BNNet()
    step = pylenet.compile(m, optimizer=optim.SGD(0.1, momentum=0.9), batch_size=8)
    x, y = rng.standard_normal((8, 8)).astype(np.float32), rng.integers(0, 3, 8)
    step(x, y)
    m.out.weight[0, 0] = np.inf  # the next step's output is not finite
    before = m.state_dict()
    with pytest.raises(RuntimeError, match="diverged"):
        step(x, y)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)  # running statistics included
    assert int(m.bn.num_batches_tracked) == 1


def test_batch_norm_training_needs_more_than_one_value_per_channel(rng):
    m = BNNet()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(np.ones((1, 8), np.float32))
    assert int(m.bn.num_batches_tracked) == 0
    m.eval()
    assert m(np.ones((1, 8), np.float32)).shape == (1, 3)


def test_an_executor_with_a_loss_needs_labels(rng):
    m = models.lenet5()
    ex = runtime.inference_executor(m, (1, 28, 28), 8, loss=F.cross_entropy)
    with pytest.raises(ValueError, match="labels"):
        ex.forward(np.zeros((8, 1, 28, 28), np.float32), None, True)


# ----------------------------------------------------------------------------- checkpoints
def test_an_optimizer_over_a_subset_resumes_over_that_subset(tmp_path, rng):
    m = models.lenet()
    opt = optim.SGD(m.fc3.parameters(), lr=0.1)
    x, y = batch(rng)
    pylenet.train(m, (x, y), epochs=1, batch_size=8, optimizer=opt, progress=False)
    m.save(tmp_path / "m.npz", optimizer=opt)
    loaded, lopt = pylenet.load(tmp_path / "m.npz", return_optimizer=True)
    assert [id(p) for p in lopt.params] == [id(loaded.fc3.weight), id(loaded.fc3.bias)]
    conv = loaded.conv1.weight.copy()
    pylenet.train(loaded, (x, y), epochs=1, batch_size=8, optimizer=lopt, progress=False)
    np.testing.assert_array_equal(loaded.conv1.weight, conv)


def test_replacing_the_optimizer_state_is_seen_by_a_step(rng):
    m = models.lenet()
    opt = optim.SGD(0.1, momentum=0.9)
    step = pylenet.compile(m, optimizer=opt, batch_size=8)
    x, y = batch(rng, 8)
    step(x, y)
    opt.state["buffers"] = [np.zeros_like(b) for b in opt.state["buffers"]]
    step(x, y)
    assert np.abs(opt.state["buffers"][0]).max() > 0  # the new arrays were used


# ----------------------------------------------------------------------------- memory plan
def test_element_wise_ops_run_in_place():
    relu = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 8)).eval()
    plain = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 8)).eval()
    a = runtime.inference_executor(relu, (64,), 32).memory_plan()
    b = runtime.inference_executor(plain, (64,), 32).memory_plan()
    assert a["activations"] == b["activations"]  # the ReLU writes over the Linear's output
    relu.train()  # training: dropout runs in place too, and the arenas reuse slots
    t = runtime.traced(relu, (64,), 32, F.cross_entropy)
    plan = runtime.build_executor(relu, t, capacity=32, optimizer=optim.SGD(0.1)).memory_plan()
    assert plan["activations"] < plan["activations_unshared"]


# ----------------------------------------------------------------------------- profiling
class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, 3)             # both winograd under the heuristic
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 9 * 9, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1))


def _train_two_conv(conv_algo, x, y, init):
    m = TwoConv()
    m.load_state_dict(init)
    step = pylenet.compile(m, optimizer=optim.SGD(0.05, momentum=0.9), batch_size=64, conv_algo=conv_algo)
    for i in range(0, len(x), 64):
        step(x[i:i + 64], y[i:i + 64])
    return m.state_dict(), step.executor(x.shape[1:]).instructions()


def test_winograd_backward_passes_run_as_one_instruction(rng):
    """A winograd layer's backward data, filter and bias become one conv2d_backward instruction
    (one pass over dy), with the same bits as the instructions it replaces."""
    x = rng.standard_normal((64 * 3, 16, 20, 20)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    init = TwoConv().state_dict()
    fused, ins = _train_two_conv("heuristic", x, y, init)
    assert [(r["op"], r["algo"]) for r in ins if r["op"].startswith("conv2d")] == [
        ("conv2d", "winograd"), ("conv2d+max_pool2d", "winograd"),  # conv2 with its pooling (fuse_conv_max_pool)
        ("conv2d_backward+max_pool2d", "winograd"),  # conv2: dx, dw, db, from the pooling's gradient
        ("conv2d_backward", "winograd")]   # conv1: dw, db (nothing needs the input's gradient)
    # "auto" times each pass alone and keeps them apart; where it picks winograd for all, the
    # results are the fused ones bit for bit
    separate, ins = _train_two_conv("auto", x, y, init)
    rows = [(r["op"], r["algo"]) for r in ins if r["op"].startswith("conv2d")]
    assert "conv2d_backward" not in [op for op, _ in rows]
    if any(algo not in ("winograd", "") for _, algo in rows):
        pytest.skip(f"auto picked other algorithms on this machine: {rows}")
    for k in fused:
        np.testing.assert_array_equal(fused[k], separate[k], err_msg=k)


def test_step_profile_names_every_instruction_and_the_update(rng):
    m = models.lenet5(seed=0)
    step = pylenet.compile(m, optim.SGD(m.parameters(), lr=0.01), batch_size=16)
    x, y = batch(rng)
    with pytest.raises(RuntimeError, match="set_profiling"):
        step.profile()
    step(x, y)
    step.set_profiling(True)
    with pytest.raises(RuntimeError, match="no step"):
        step.profile()
    for _ in range(3):
        step(x, y)
    rows = step.profile()
    assert rows[-1]["op"] == "update" and rows[-1]["seconds"] > 0
    ops = [r["op"] for r in rows]
    for op in ("conv2d+max_pool2d", "conv2d_backward_data", "conv2d_backward_filter", "linear", "cross_entropy"):
        assert op in ops  # (each pooling folded into its convolution: fuse_conv_max_pool)
    assert {r["scope"] for r in rows if r["op"] == "conv2d+max_pool2d"} == {"Sequential.0", "Sequential.3"}
    assert all(r["seconds"] >= 0 for r in rows) and abs(sum(r["share"] for r in rows) - 1) < 1e-9
    assert all(r["algo"] for r in rows if r["op"].startswith("conv2d") and "bias" not in r["op"])
    # the two convolutions (forward and backward) dominate LeNet-5's step
    conv = sum(r["share"] for r in rows if r["op"].startswith("conv2d"))
    assert conv > 0.3
    step.set_profiling(False)
    with pytest.raises(RuntimeError):
        step.profile()


# ----------------------------------------------------------------------------- caches
def test_building_other_layers_keeps_compiled_steps(rng):
    m = models.lenet5(seed=0)
    step = pylenet.compile(m, optim.SGD(m.parameters(), lr=0.01), batch_size=16)
    x, y = batch(rng)
    step(x, y)
    ex = step._ex
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())  # an unrelated model built meanwhile
    models.lenet(seed=1)
    step(x, y)
    assert step._ex is ex
    m.append(nn.Identity())  # a change to this model does recompile
    step(x, y)
    assert step._ex is not ex


def test_a_module_changed_inside_its_own_init_is_retraced(rng):
    class Grows(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self(np.zeros((1, 4), np.float32))  # compiled while still being built
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    assert Grows()(np.zeros((3, 4), np.float32)).shape == (3, 2)


def test_predict_reuses_one_executor_for_any_count(rng):
    m = models.lenet5(seed=0)
    m.predict(rng.standard_normal((5, 1, 28, 28)).astype(np.float32))
    before = {k for k in m._cache if k[0] == "exec"}
    for n in (1, 3, 7, 40):
        m.predict(rng.standard_normal((n, 1, 28, 28)).astype(np.float32))
    assert {k for k in m._cache if k[0] == "exec"} == before and len(before) == 1


def test_sequential_item_assignment_like_torch():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    m[-1] = nn.Linear(4, 3)
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert m(np.zeros((2, 4), np.float32)).shape == (2, 3)
    with pytest.raises(IndexError):
        m[3] = nn.ReLU()
    with pytest.raises(TypeError):
        m[0] = np.zeros(3)


def test_reassigned_layer_keeps_its_place_as_in_torch():
    torch = pytest.importorskip("torch")

    class Ours(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    class Theirs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(2, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

    ours, theirs = Ours(), Theirs()
    ours.a, theirs.a = nn.Linear(2, 3), torch.nn.Linear(2, 3)
    ours.b.bias, theirs.b.bias = nn.Parameter(np.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_an_unpickled_model_with_batch_norm_compiles_and_trains():
    """Arrays that come back from pickle carry their own (equivalent) dtype objects: the
    executor's checks compare dtypes by equivalence, not identity (found by from_torch's tests)."""
    import pickle
    from pylenet import nn, optim
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10),
                      input_shape=(1, 28, 28))
    again = pickle.loads(pickle.dumps(m))
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = np.arange(8) % 10
    steps = [pylenet.compile(net, optimizer=optim.SGD(0.01), batch_size=8) for net in (m, again)]
    losses = [[float(s(x, y)) for _ in range(3)] for s in steps]
    assert losses[0] == losses[1]  # the same steps on the same (copied) state
    assert not np.allclose(m[1].running_mean, 0)
    np.testing.assert_array_equal(again[1].running_mean, m[1].running_mean)
    np.testing.assert_array_equal(again[4].weight, m[4].weight)


def test_cuda_graphs_switch_is_read_from_the_environment(monkeypatch):
    for value, on in (("", False), ("0", False), ("off", False), ("1", True), (" ON ", True), ("yes", True)):
        monkeypatch.setenv("PYLENET_CUDA_GRAPHS", value)
        assert runtime.cuda_graphs_default() is on, value
    monkeypatch.delenv("PYLENET_CUDA_GRAPHS")
    assert runtime.cuda_graphs_default() is False
    monkeypatch.setenv("PYLENET_CUDA_GRAPHS", "sometimes")
    with pytest.raises(ValueError, match="PYLENET_CUDA_GRAPHS must be 0 or 1, got 'sometimes'"):
        runtime.cuda_graphs_default()


class _PoolReluNet(nn.Module):
    """Both poolings followed by a ReLU, batch norm and dropout between, an NLL head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.bn(self.conv1(x)), 2))
        x = F.relu(F.avg_pool2d(self.conv2(x), 2))
        return F.log_softmax(self.fc(self.drop(x).flatten(1)), dim=1)


@pytest.mark.parametrize("name", ["lenet5", "cudnn_lenet", "mnist_net", "pool_relu_net"])
def test_cuda_lowering_rules_train_bit_for_bit_on_the_cpu(name, rng):
    """The CUDA backend folds a ReLU into the pooling, conv or Linear before it and the loss, its gradient and
    the accuracy count into one instruction. Applied on the CPU (device_rules), the rewritten
    instruction list must train exactly like the plain one: the same values flow, only fewer
    instructions and buffers carry them."""
    make = _PoolReluNet if name == "pool_relu_net" else lambda: models.create(name, seed=0)
    loss = F.nll_loss if name in ("mnist_net", "pool_relu_net") else F.cross_entropy
    x = rng.standard_normal((80, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 80).astype(np.int64)
    results = []
    for rules in (False, True):
        pylenet.manual_seed(0)
        m = make()  # the same initial weights both times
        with runtime._EvalMode(m, training=True):
            t = runtime.traced(m, (1, 28, 28), 32, loss)
            ex = runtime.build_executor(m, t, capacity=32, optimizer=optim.SGD(0.05, momentum=0.9), seed=5,
                                        device_rules=rules, fuse=rules)  # plain: not the CPU's own folds
        labels = [i["op"] for i in ex.instructions()]
        it = 0
        for epoch in range(2):
            order = np.random.default_rng(epoch).permutation(80).astype(np.int64)
            stats, it = ex.train_epoch(x, y, order, 32, {"kind": "constant"}, it, None, 1)  # a partial batch too
        results.append(({k: np.array(v) for k, v in m.state_dict().items()}, stats, labels))
    (plain, s0, l0), (fused, s1, l1) = results
    for k in plain:
        np.testing.assert_array_equal(plain[k], fused[k], err_msg=k)
    assert s0 == s1
    assert "loss_head" in l1 and "classify" not in l1 and "loss_head" not in l0
    folded = sum(op.endswith("+relu") for op in l1)
    assert folded == {"lenet5": 6, "cudnn_lenet": 1, "mnist_net": 4, "pool_relu_net": 4}[name], l1
    assert len(l1) == len(l0) - folded - 2  # each folded pair drops a ReLU and its backward
