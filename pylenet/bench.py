"""pylenet vs PyTorch on the CPU, side by side in one process.

Same architecture, same initial weights (through state_dict), same batches, same optimizer
(SGD, momentum 0.9), same number of steps and the same thread count. Warm-up is excluded;
the two frameworks are timed alternately, repeat after repeat, so a change in the machine's
load hits both; throughputs are medians and ratios are medians of the paired runs. Data loading is excluded for both:
the images are in memory and each framework indexes its batches itself.

    python benchmarks/bench_cpu.py [--threads 2] [--steps 100] [--repeats 5] [--epoch]
    pylenet bench ...   (the same harness; it lives in pylenet/bench.py so the installed
                         package carries it)

Prints a table; --out PATH also writes the run as JSON (benchmarks/bench_cpu.py, run from a
checkout, writes to benchmarks/results/<device>-<date>.json by default).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

import pylenet
from pylenet import models, optim


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def gemm_ceiling(threads, n=2048, repeats=5):
    """GFLOP/s of a large float32 matrix product through NumPy's BLAS on these cores."""
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(threads)
    except ImportError:
        limiter = None
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    t, _ = _median_time(lambda: a @ a, repeats)
    if limiter is not None:
        limiter.unregister() if hasattr(limiter, "unregister") else None
    return 2 * n ** 3 / t / 1e9


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_loss(name):
    """PyTorch's side of the loss pylenet trains `name` with (_compiled): the same function."""
    import torch.nn.functional as TF
    return TF.nll_loss if name == "mnist_net" else TF.cross_entropy


def _compiled(model, batch, images_shape, device=("cpu", 0)):
    """(training executor with SGD momentum 0.9, inference executor, info) for a model."""
    from . import functional as F
    from . import runtime
    loss = F.nll_loss if isinstance(model, models.MnistNet) else F.cross_entropy
    with runtime._EvalMode(model, training=True):
        t = runtime.traced(model, images_shape, batch, loss)
        net = runtime.build_executor(model, t, capacity=batch, device=device, optimizer=optim.SGD(0.01, momentum=0.9))
    with runtime._EvalMode(model):
        infer = runtime.inference_executor(model, images_shape, batch, device)
    fwd = [n["flops"] for n in t.graph.nodes() if not n["backward"]]
    info = {"flops_per_sample": 3 * sum(fwd),  # forward + both backward passes
            "memory_plan_bytes": net.memory_plan()["total"], "conv_algorithms": net.conv_algorithms}
    return net, infer, info


def setup_pylenet(name, batch, steps, images, labels, threads):
    """(train, infer, info): callables running `steps` batches of each, warmed up."""
    from .runtime import softmax_rows
    model = models.create(name, seed=0)
    pylenet.set_num_threads(threads)
    net, infer, info = _compiled(model, batch, images.shape[1:])
    n = batch * steps
    x, y = images[:n], labels[:n]
    order = np.arange(n, dtype=np.int64)
    sched = {"kind": "constant"}
    net.train_epoch(x[: batch * 3], y[: batch * 3], order[: batch * 3], batch, sched, 0, None, 1)  # warm-up
    infer.forward(x[: batch * 3], None, True)

    def train():
        net.train_epoch(x, y, order, batch, sched, 0, None, 1)
    train.executor = net  # the neighbour run reads how many workers its steps used
    return train, (lambda: softmax_rows(infer.forward(x, None, True)[0])), info


def torch_twin(model, dtype=None):
    """The same network in PyTorch, holding the model's weights (cast to `dtype`, e.g.
    torch.float64; float32 by default): torch.nn modules of the same classes and arguments for a
    model made of pylenet's built-in modules; the torch versions of models.LeNet and
    models.MnistNet. Used by the benchmark and the tests' PyTorch comparisons."""
    import torch
    nn = torch.nn
    if isinstance(model, (models.LeNet, models.MnistNet)):
        twin = _torch_class(type(model).__name__)()
    else:
        from .checkpoint import _module_tree
        made = {}
        for entry in _module_tree(model):
            t, cfg, p = entry["type"], entry["config"], entry["path"]
            if cfg is None:
                raise ValueError(f"torch_twin: {t} is not a built-in pylenet module; write its torch twin by hand")
            if t == "Sequential":
                m = nn.Sequential()
            else:
                m = getattr(nn, t)(**cfg)
            made[p] = m
            if p:
                parent, _, leaf = p.rpartition(".")
                made[parent].add_module(leaf, m)
        twin = made[""]
    dtype = dtype or torch.float32
    twin = twin.to(dtype)
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    twin.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    return twin


def _torch_class(name):
    import torch
    import torch.nn.functional as TF
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = TF.max_pool2d(TF.relu(self.conv1(x)), 2)
            x = TF.max_pool2d(TF.relu(self.conv2(x)), 2)
            x = x.view(x.size(0), -1)
            return self.fc3(TF.relu(self.fc2(TF.relu(self.fc1(x)))))

    class MnistNet(nn.Module):  # examples/mnist/main.py's Net
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

        def forward(self, x):
            x = TF.max_pool2d(TF.relu(self.conv2(TF.relu(self.conv1(x)))), 2)
            x = torch.flatten(self.dropout1(x), 1)
            x = self.dropout2(TF.relu(self.fc1(x)))
            return TF.log_softmax(self.fc2(x), dim=1)

    return {"LeNet": LeNet, "MnistNet": MnistNet}[name]


def setup_torch(name, batch, steps, images, labels, threads):
    """(train, infer, info) for the torch twin: same weights, batches and optimizer, warmed up."""
    import torch
    torch.set_num_threads(threads)
    tm = torch_twin(models.create(name, seed=0))
    opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    lossf = _torch_loss(name)
    n = batch * steps
    X, Y = torch.from_numpy(images[:n]), torch.from_numpy(labels[:n])

    def run_train(count=n):
        for i in range(0, count, batch):
            opt.zero_grad(set_to_none=True)
            loss = lossf(tm(X[i:i + batch]), Y[i:i + batch])
            loss.backward()
            opt.step()

    def run_infer(count=n):
        tm.eval()
        with torch.inference_mode():
            for i in range(0, count, batch):
                torch.softmax(tm(X[i:i + batch]), dim=1)
        tm.train()

    run_train(batch * 3)
    run_infer(batch * 3)
    return run_train, run_infer, {"torch_version": torch.__version__}


def _have_onnxruntime():
    """Whether onnx (to export) and onnxruntime (to run) are both installed."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def _ort_session(name, threads):
    """An onnxruntime session (CPU execution provider, `threads` intra-op threads, sequential)
    running the ONNX export of the same model with the same weights; None without onnx and
    onnxruntime installed."""
    if not _have_onnxruntime():
        return None
    import onnxruntime as ort
    from . import onnx as plonnx
    model = models.create(name, seed=0)
    model.eval()
    blob = plonnx.export(model, None).SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def setup_onnxruntime(name, batch, steps, images, threads):
    """(infer, info) for onnxruntime on the same images in batches of `batch`, or (None, None)."""
    sess = _ort_session(name, threads)
    if sess is None:
        return None, None
    import onnxruntime as ort
    from .runtime import softmax_rows
    x = np.ascontiguousarray(images[:batch * steps])

    def run_infer(count=len(x)):  # probabilities, as the pylenet and PyTorch sides compute them
        for i in range(0, count, batch):
            softmax_rows(sess.run(["output"], {"input": x[i:i + batch]})[0])

    run_infer(batch * 3)
    return run_infer, {"onnxruntime_version": ort.__version__}


def latency(name, threads, calls=1000, repeats=5):
    """Microseconds per single-image call, median of `repeats` blocks of `calls`: pylenet's
    model(x) and model.predict(x) (the user's paths, Python included) and onnxruntime's run."""
    model = models.create(name, seed=0)
    model.eval()
    pylenet.set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal((1, *model.input_shape)).astype(np.float32)
    paths = {"pylenet_model_call": lambda: model(x), "pylenet_predict": lambda: model.predict(x)}
    sess = _ort_session(name, threads)
    if sess is not None:
        paths["onnxruntime"] = lambda: sess.run(["output"], {"input": x})
    times = {k: [] for k in paths}
    for fn in paths.values():
        for _ in range(50):
            fn()
    for _ in range(repeats):  # alternately, block by block
        for k, fn in paths.items():
            time.sleep(0.02)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) / calls * 1e6)
    return {"model": name, **{k: statistics.median(v) for k, v in times.items()}}


def measure(name, batch, steps, repeats, images, labels, threads, with_torch):
    """Times pylenet and torch ALTERNATELY (p, t, p, t, ...), so drifts in the machine's load
    hit both; ratios are medians of the paired runs."""
    n = batch * steps
    rss0 = _maxrss_mib()
    p_train, p_infer, p_info = setup_pylenet(name, batch, steps, images, labels, threads)
    p_rss = _maxrss_mib() - rss0
    t_train = t_infer = None
    o_infer, o_info = setup_onnxruntime(name, batch, steps, images, threads)
    if with_torch:
        rss0 = _maxrss_mib()
        t_train, t_infer, t_info = setup_torch(name, batch, steps, images, labels, threads)
        t_rss = _maxrss_mib() - rss0

    def timed(fn):
        # A pause first: the other framework's idle workers stop spinning (PyTorch's OpenMP
        # threads spin for a while after each op and would otherwise eat into this run).
        time.sleep(0.05)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times = {"p_train": [], "p_infer": [], "t_train": [], "t_infer": [], "o_infer": []}
    for _ in range(repeats):
        times["p_train"].append(timed(p_train))
        if with_torch:
            times["t_train"].append(timed(t_train))
    for _ in range(repeats):
        times["p_infer"].append(timed(p_infer))
        if with_torch:
            times["t_infer"].append(timed(t_infer))
        if o_infer is not None:
            times["o_infer"].append(timed(o_infer))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    run = {"model": name, "batch": batch,
           "pylenet": {"train_samples_per_s": n / med["p_train"], "infer_images_per_s": n / med["p_infer"],
                       "train_gflops": p_info["flops_per_sample"] * n / med["p_train"] / 1e9,
                       "memory_plan_bytes": p_info["memory_plan_bytes"],
                       "host_peak_bytes": pylenet.host_memory_stats()["peak_bytes"],
                       "maxrss_growth_mib": p_rss, "conv_algorithms": p_info["conv_algorithms"]}}
    if with_torch:
        run["torch"] = {"train_samples_per_s": n / med["t_train"], "infer_images_per_s": n / med["t_infer"],
                        "maxrss_growth_mib": t_rss, **t_info}
        run["train_ratio"] = statistics.median(t / p for t, p in zip(times["t_train"], times["p_train"]))
        run["infer_ratio"] = statistics.median(t / p for t, p in zip(times["t_infer"], times["p_infer"]))
    if o_infer is not None:
        run["onnxruntime"] = {"infer_images_per_s": n / med["o_infer"], **o_info}
        run["onnxruntime_ratio"] = statistics.median(o / p for o, p in zip(times["o_infer"], times["p_infer"]))
    return run


def _out_path(out, results_dir, device):
    """Where the run's JSON goes: --out, else <results_dir>/<device>-<date>.json when the caller
    names a results folder, else nowhere. Refused before the run if its folder does not exist."""
    if out is None and results_dir is not None:
        out = os.path.join(results_dir, f"{device}-{datetime.date.today().isoformat()}.json")
    if out is not None:
        from .atomic import check_target
        check_target(out, "--out")
    return out


def _write_result(result, out):
    """The JSON of a run at `out` (None: printed only), written to a temporary file and renamed
    into place: an interrupted run leaves no half-written file."""
    if out is None:
        print("(not saved: pass --out PATH to keep this run as JSON)")
        return
    from .atomic import write_atomic
    write_atomic(out, lambda f: json.dump(result, f, indent=2), text=True)
    print(f"wrote {out}")


# ----------------------------------------------------------------------------- CUDA
def _sync_torch():
    import torch
    torch.cuda.synchronize()


def setup_pylenet_cuda(name, batch, steps, images, labels, device=0, graphs=False):
    """(train, infer, info) on a GPU: the data uploaded once; each call ends synchronised
    (the epoch reads its totals back, evaluation reads its totals back). graphs: training
    steps captured as a CUDA graph and replayed (info["graph_stats"]() reports them)."""
    model = models.create(name, seed=0)
    net, infer, info = _compiled(model, batch, images.shape[1:], ("cuda", device))
    net.cuda_graphs = bool(graphs)
    info["graph_stats"] = net.cuda_graph_stats
    n = batch * steps
    net.upload_state()
    data = net.upload(images[:n], labels[:n])
    infer.upload_state()
    idata = infer.upload(images[:n], labels[:n])
    order = np.arange(n, dtype=np.int64)
    sched = {"kind": "constant"}
    # Warm-up over the timed order itself: the device buffers (and a CUDA graph) made for it are reused.
    net.train_epoch_device(data, order, batch, sched, 0, None, steps)
    infer.evaluate_device(idata)
    return (lambda: net.train_epoch_device(data, order, batch, sched, 0, None, n // batch)), \
        (lambda: infer.evaluate_device(idata)), info


def setup_torch_cuda(name, batch, steps, images, labels, tf32=False):
    """The torch twin on the GPU with cuDNN: same weights, batches (already on the device) and
    optimizer; TF32 off for a like-for-like float32 comparison unless `tf32`."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    tm = torch_twin(models.create(name, seed=0)).cuda()
    opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    lossf = _torch_loss(name)
    n = batch * steps
    X, Y = torch.from_numpy(images[:n]).cuda(), torch.from_numpy(labels[:n]).cuda()

    def run_train(count=n):
        for i in range(0, count, batch):
            opt.zero_grad(set_to_none=True)
            lossf(tm(X[i:i + batch]), Y[i:i + batch]).backward()
            opt.step()
        _sync_torch()

    def run_infer(count=n):
        with torch.inference_mode():
            for i in range(0, count, batch):
                torch.softmax(tm(X[i:i + batch]), dim=1)
        _sync_torch()

    run_train(batch * 3)
    run_infer(batch * 3)
    return run_train, run_infer, {"torch_version": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                                  "tf32": tf32}


def measure_cuda(name, batch, steps, repeats, images, labels, with_torch):
    n = batch * steps
    pylenet.cuda.empty_cache()
    pylenet.cuda.reset_peak_memory_stats()
    p_train, p_infer, p_info = setup_pylenet_cuda(name, batch, steps, images, labels)
    g_train, _, g_info = setup_pylenet_cuda(name, batch, steps, images, labels, graphs=True)
    peers = {}
    if with_torch:
        import torch
        torch.cuda.reset_peak_memory_stats()
        for key, tf32 in (("torch", False), ("torch_tf32", True)):
            peers[key] = setup_torch_cuda(name, batch, steps, images, labels, tf32)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times = {k: [] for k in ("p_train", "p_infer", "g_train",
                             *(f"{k}_{w}" for k in peers for w in ("train", "infer")))}
    for what, idx in (("train", 0), ("infer", 1)):
        for _ in range(repeats):  # alternate, so drifts hit every framework alike
            times[f"p_{what}"].append(timed((p_train, p_infer)[idx]))
            if what == "train":
                times["g_train"].append(timed(g_train))
            for k, fns in peers.items():
                times[f"{k}_{what}"].append(timed(fns[idx]))
    med = {k: statistics.median(v) for k, v in times.items()}
    run = {"model": name, "batch": batch,
           "pylenet": {"train_samples_per_s": n / med["p_train"], "infer_images_per_s": n / med["p_infer"],
                       "train_gflops": p_info["flops_per_sample"] * n / med["p_train"] / 1e9,
                       "memory_plan_bytes": p_info["memory_plan_bytes"],
                       "device_peak_bytes": pylenet.cuda.memory_stats()["peak_bytes"],
                       "conv_algorithms": p_info["conv_algorithms"]},
           # the same training steps captured once as a CUDA graph and replayed
           "pylenet_graphs": {"train_samples_per_s": n / med["g_train"], **g_info["graph_stats"](),
                              "kernels_per_step_eager": p_info["graph_stats"]()["kernels_per_step"]},
           "graph_train_speedup": statistics.median(p / g for p, g in zip(times["p_train"], times["g_train"]))}
    if with_torch:
        for k in peers:
            run[f"graph_train_ratio_vs_{k}"] = statistics.median(
                t / g for t, g in zip(times[f"{k}_train"], times["g_train"]))
    if with_torch:
        import torch
        for k, fns in peers.items():
            run[k] = {"train_samples_per_s": n / med[f"{k}_train"], "infer_images_per_s": n / med[f"{k}_infer"],
                      **fns[2]}
            run[f"train_ratio_vs_{k}"] = statistics.median(t / p for t, p in zip(times[f"{k}_train"], times["p_train"]))
            run[f"infer_ratio_vs_{k}"] = statistics.median(t / p for t, p in zip(times[f"{k}_infer"], times["p_infer"]))
        run["torch"]["device_peak_bytes"] = torch.cuda.max_memory_allocated()
    return run


def full_epoch_cuda(with_torch):
    """Seconds of one full MNIST epoch (lenet5, batch 64) through pylenet.train on the GPU, and
    the same epoch in PyTorch (data on the device, shuffled batches, float32 without TF32)."""
    ds = pylenet.datasets.mnist(train=True, download=False)
    sgd = lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    pylenet.train(models.lenet5(), ds.subset(640), epochs=1, optimizer=sgd(), progress=False, device="cuda")
    h = pylenet.train(models.lenet5(), ds, epochs=2, batch_size=64, optimizer=sgd(), progress=False, device="cuda")
    out = {"pylenet": min(h.seconds)}
    saved = os.environ.get("PYLENET_CUDA_GRAPHS")
    os.environ["PYLENET_CUDA_GRAPHS"] = "1"
    try:
        h = pylenet.train(models.lenet5(), ds, epochs=2, batch_size=64, optimizer=sgd(), progress=False, device="cuda")
        out["pylenet_graphs"] = min(h.seconds)
    finally:
        if saved is None:
            del os.environ["PYLENET_CUDA_GRAPHS"]
        else:
            os.environ["PYLENET_CUDA_GRAPHS"] = saved
    if with_torch:
        import torch
        import torch.nn.functional as TF
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        tm = torch_twin(models.lenet5()).cuda()
        opt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        X, Y = torch.from_numpy(ds.images).cuda(), torch.from_numpy(ds.labels.astype(np.int64)).cuda()
        secs = []
        for _ in range(3):
            perm = torch.randperm(len(X), device="cuda")
            _sync_torch()
            t0 = time.perf_counter()
            for i in range(0, len(X), 64):
                idx = perm[i:i + 64]
                opt.zero_grad(set_to_none=True)
                TF.cross_entropy(tm(X[idx]), Y[idx]).backward()
                opt.step()
            _sync_torch()
            secs.append(time.perf_counter() - t0)
        out["torch"] = min(secs[1:])
    return out


def main_cuda(args, have_torch):
    batches = [int(b) for b in args.batches.split(",")]
    images, labels, source = load_images(max(batches) * args.steps)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": "cuda",
              "gpu": pylenet.cuda.get_device_name(0), "steps": args.steps, "repeats": args.repeats, "data": source,
              "pylenet": pylenet.build_info(), "runs": []}
    for name in args.models.split(","):
        for batch in batches:
            result["runs"].append(measure_cuda(name, batch, args.steps, args.repeats, images, labels, have_torch))
    if args.epoch:
        result["full_epoch_seconds_lenet5_b64"] = full_epoch_cuda(have_torch)
    print(f"GPU: {result['gpu']}, pylenet {result['pylenet']['version']}, data {source}; ratios: "
          "torch time / pylenet time (torch float32 with TF32 off; tf32 = torch's defaults)")
    hdr = (f"{'model':<12} {'batch':>5} | {'train/s pylenet':>15} {'torch':>9} {'ratio':>6} {'tf32':>6} | "
           f"{'infer/s pylenet':>15} {'torch':>9} {'ratio':>6} | {'peak MiB':>8} {'torch':>7}")
    print(hdr)
    print("-" * len(hdr))
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"
    for r in result["runs"]:
        p, t = r["pylenet"], r.get("torch", {})
        print(f"{r['model']:<12} {r['batch']:>5} | {p['train_samples_per_s']:>15,.0f} "
              f"{fmt(t.get('train_samples_per_s'), '>9,.0f'):>9} {fmt(r.get('train_ratio_vs_torch'), '>6.2f'):>6} "
              f"{fmt(r.get('train_ratio_vs_torch_tf32'), '>6.2f'):>6} | {p['infer_images_per_s']:>15,.0f} "
              f"{fmt(t.get('infer_images_per_s'), '>9,.0f'):>9} {fmt(r.get('infer_ratio_vs_torch'), '>6.2f'):>6} | "
              f"{p['device_peak_bytes'] / 2**20:>8.1f} {fmt(t.get('device_peak_bytes', 0) / 2**20, '>7.1f'):>7}")
    if "full_epoch_seconds_lenet5_b64" in result:
        e = result["full_epoch_seconds_lenet5_b64"]
        print(f"full MNIST epoch, lenet5, batch 64: pylenet.train {e['pylenet']:.3f} s"
              + (f", torch {e['torch']:.3f} s" if "torch" in e else ""))
    _write_result(result, args.out)
    return 0


def load_images(n):
    """Real MNIST when available (same bytes for both frameworks), else seeded noise."""
    try:
        ds = pylenet.datasets.mnist(train=True, download=False)
        return ds.images[:n].copy(), ds.labels[:n].copy(), "mnist"
    except Exception:
        rng = np.random.default_rng(0)
        return (rng.standard_normal((n, 1, 28, 28)).astype(np.float32),
                rng.integers(0, 10, n).astype(np.int64), "random")


def full_epoch(threads):
    """Seconds for one full MNIST epoch of lenet5 through pylenet.train (the CLI's path)."""
    ds = pylenet.datasets.mnist(train=True, download=False)
    pylenet.set_num_threads(threads)
    model = models.lenet5()
    h = pylenet.train(model, ds, epochs=1, batch_size=64, optimizer=optim.SGD(0.05, momentum=0.9, nesterov=True,
                                                                              weight_decay=5e-4), progress=False)
    return h.epochs[0]["seconds"]


def _spin(core):  # the busy neighbour: one core at 100 %
    os.sched_setaffinity(0, {core})
    while True:
        pass


def neighbour(name, batch, steps, repeats, images, labels, threads):
    """Training samples/s of `name` on 1 thread and on `threads` threads, alternately, with
    another process busy on the last core all along (bounded spins, then sleeping waits, and
    chunks claimed as workers come free: all threads should not be slower than one)."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    busy = ctx.Process(target=_spin, args=(max(os.sched_getaffinity(0)),), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        runs = {1: setup_pylenet(name, batch, steps, images, labels, 1)[0],
                threads: setup_pylenet(name, batch, steps, images, labels, threads)[0]}
        before = runs[threads].executor.thread_counts(True)
        times = {1: [], threads: []}
        for _ in range(repeats):
            for t, fn in runs.items():
                pylenet.set_num_threads(t)
                time.sleep(0.05)
                t0 = time.perf_counter()
                fn()
                times[t].append(time.perf_counter() - t0)
    finally:
        busy.terminate()
        busy.join()
    n = batch * steps
    counts = [a - b for a, b in zip(runs[threads].executor.thread_counts(True), before)]
    return {"model": name, "batch": batch, "threads": threads,
            "steps_at_each_thread_count": counts,  # the all-threads run's steps at 1, 2, ... workers
            "one_thread_samples_per_s": n / statistics.median(times[1]),
            "all_threads_samples_per_s": n / statistics.median(times[threads]),
            "ratio_all_to_one": statistics.median(a / b for a, b in zip(times[1], times[threads]))}


def main(argv=None, results_dir=None):
    """`pylenet bench`. results_dir: where a run goes without --out (None: printed only)."""
    ap = argparse.ArgumentParser(prog="pylenet bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=100, help="training steps per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="lenet5,cudnn_lenet")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--epoch", action="store_true", help="also time a full MNIST epoch through pylenet.train")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None, help="also write the run as JSON here (default: print only)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: pylenet on the GPU vs PyTorch + cuDNN on the same GPU")
    ap.add_argument("--neighbour", action="store_true",
                    help="also train each model on 1 and on all threads beside a process busy on one core")
    args = ap.parse_args(argv)
    try:
        args.out = _out_path(args.out, results_dir, args.device)
    except ValueError as e:
        ap.error(str(e))

    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    if args.device == "cuda":
        pylenet.cuda.require("bench --device cuda")
        if have_torch:
            import torch
            have_torch = torch.cuda.is_available()
        return main_cuda(args, have_torch)
    batches = [int(b) for b in args.batches.split(",")]
    images, labels, source = load_images(max(batches) * args.steps)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or
              platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads, "steps": args.steps,
              "repeats": args.repeats, "data": source, "pylenet": pylenet.build_info(),
              "gemm_ceiling_gflops": gemm_ceiling(args.threads), "runs": []}
    try:
        with open("/proc/cpuinfo") as f:
            result["machine"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for name in args.models.split(","):
        for batch in batches:
            run = measure(name, batch, args.steps, args.repeats, images, labels, args.threads, have_torch)
            run["train_fraction_of_gemm_ceiling"] = run["pylenet"]["train_gflops"] / result["gemm_ceiling_gflops"]
            result["runs"].append(run)
    if _have_onnxruntime():  # single-image latency, beside onnxruntime
        result["latency_us"] = [latency(name, args.threads, repeats=args.repeats) for name in args.models.split(",")]
    if args.epoch:
        result["full_epoch_seconds_lenet5_b64"] = full_epoch(args.threads)
    if args.neighbour:
        result["busy_neighbour"] = [neighbour(name, batches[0], args.steps, args.repeats, images, labels, args.threads)
                                    for name in args.models.split(",")]

    print(f"machine: {result['machine']}, {args.threads} threads, pylenet {result['pylenet']['version']} "
          f"(simd {result['pylenet']['simd']['path']}), data {source}; "
          f"GEMM ceiling (NumPy) {result['gemm_ceiling_gflops']:.0f} GFLOP/s")
    hdr = (f"{'model':<12} {'batch':>5} | {'train/s pylenet':>15} {'torch':>9} {'ratio':>6} | "
           f"{'infer/s pylenet':>15} {'torch':>9} {'ratio':>6} {'onnxrt':>9} {'ratio':>6} | "
           f"{'GFLOP/s':>7} {'%ceil':>6} | {'plan MiB':>8}")
    print(hdr)
    print("-" * len(hdr))
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for r in result["runs"]:
        p, t, o = r["pylenet"], r.get("torch", {}), r.get("onnxruntime", {})
        print(f"{r['model']:<12} {r['batch']:>5} | {p['train_samples_per_s']:>15,.0f} "
              f"{fmt(t.get('train_samples_per_s'), '>9,.0f'):>9} {fmt(r.get('train_ratio'), '>6.2f'):>6} | "
              f"{p['infer_images_per_s']:>15,.0f} {fmt(t.get('infer_images_per_s'), '>9,.0f'):>9} "
              f"{fmt(r.get('infer_ratio'), '>6.2f'):>6} {fmt(o.get('infer_images_per_s'), '>9,.0f'):>9} "
              f"{fmt(r.get('onnxruntime_ratio'), '>6.2f'):>6} | {p['train_gflops']:>7.1f} "
              f"{100 * r['train_fraction_of_gemm_ceiling']:>5.1f}% | {p['memory_plan_bytes'] / 2**20:>8.2f}")
    if any("winograd" in r["pylenet"].get("conv_algorithms", ()) for r in result["runs"]):
        print("GFLOP/s counts the direct sum's FLOPs; layers on winograd do a quarter (3x3) or a third (5x5) "
              "of their multiplications, so %ceil can pass 100%")
    for r in result.get("latency_us", []):
        print(f"one image, {r['model']}: model(x) {r['pylenet_model_call']:.0f} us, predict "
              f"{r['pylenet_predict']:.0f} us, onnxruntime {fmt(r.get('onnxruntime'), '.0f')} us")
    if "full_epoch_seconds_lenet5_b64" in result:
        print(f"full MNIST epoch, lenet5, batch 64, through pylenet.train: "
              f"{result['full_epoch_seconds_lenet5_b64']:.2f} s")
    for r in result.get("busy_neighbour", []):
        print(f"beside a busy process on one core: {r['model']} batch {r['batch']}: 1 thread "
              f"{r['one_thread_samples_per_s']:,.0f} samples/s, {r['threads']} threads "
              f"{r['all_threads_samples_per_s']:,.0f} ({r['ratio_all_to_one']:.2f}x); steps of that run at "
              + ", ".join(f"{k + 1} worker{'s' if k else ''}: {c}" for k, c in enumerate(r["steps_at_each_thread_count"])))
    _write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
