"""Command line: ``python -m pylenet <command>`` (also installed as ``pylenet``).

  info      what was built and what is used
  summary   a model's layers, FLOPs and memory plan
  train     train a model on MNIST / Fashion-MNIST and save it
  eval      evaluate a saved model on a dataset's test split
  predict   classify pictures (PNG, JPEG, ...) and .npy images with a saved model
  plot      pictures (PNG): training curves, filters, feature maps, confusion matrix, worst images
  speedrun  MNIST to 99 % test accuracy in about the time of one lenet5 epoch (pylenet.speedrun)
  bench     pylenet vs PyTorch training/inference throughput (benchmarks/)
  export-onnx   write a saved model as ONNX (onnxruntime and other runtimes run it)
  export-cudnn / import-cudnn   exchange cudnn_lenet weights with NVIDIA's cudnn-training sample
"""
import argparse
import json
import os
import sys
import time

from pylenet.atomic import check_target


def _cmd_info(args):
    import pylenet

    info = pylenet.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    simd = info["simd"]
    print(f"pylenet {info['version']}")
    print(f"  compiler : {info['compiler']}")
    print(f"  simd     : active {simd['path']}; compiled {', '.join(simd['compiled'])}; "
          f"supported here {', '.join(simd['supported'])}; 512-bit FMAs split in two: "
          f"{'yes' if simd['split_fma512'] else 'no'}"
          f"{' (the direct conv picks 8 or 16 lanes per shape)' if simd['path'] == 'avx512' and simd['split_fma512'] else ''}")
    print(f"  threads  : {info['threads']} (of {info['hardware_threads']} hardware threads; pylenet's thread pool: "
          "work claimed as workers come free, bounded spinning, then sleep; "
          + ("steps time themselves and use fewer workers while that is faster)" if info["adaptive_threads"]
             else "every step on all of them: adaptive=False)"))
    if info["cuda"]:
        if pylenet.cuda.is_available():
            names = [pylenet.cuda.get_device_name(i) for i in range(pylenet.cuda.device_count())]
            cuda = f"compiled in; {len(names)} device(s): " + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
        else:
            cuda = f"compiled in; not usable here ({pylenet.cuda.unavailable_reason()})"
    else:
        cuda = "not compiled in (no nvcc at build time, or PYLENET_CUDA=OFF)"
    print(f"  cuda     : {cuda}")
    return 0


def _cmd_summary(args):
    """A built-in model with the optimizer `pylenet train` would give it, or a saved model with
    the optimizer saved beside it (the one a --resume continues with)."""
    import pylenet
    from pylenet import models
    source = args.source
    if source is not None and args.model is not None:
        raise ValueError(f"pass a model name or a checkpoint, not both ({source!r} and --model {args.model})")
    source = source or args.model or "lenet5"
    if source in models.MODELS:
        model, opt = models.create(source), recipe_optimizer(source)
    elif os.path.exists(source) or source.endswith(".npz"):
        model, opt = pylenet.load(source, return_optimizer=True)
        opt = opt or "sgd"
    else:
        raise ValueError(f"{source!r} is neither a model ({', '.join(sorted(models.MODELS))}) nor a checkpoint file")
    model.summary(batch_size=args.batch_size, optimizer=opt)
    return 0


DEFAULTS = {  # the CLI's training recipe: reaches >= 99% on MNIST with lenet5 in 10 epochs
    "epochs": 10, "batch_size": 64, "optimizer": "sgd", "lr": None, "momentum": 0.9,
    "weight_decay": 5e-4, "schedule": "cosine",
}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adadelta": 1.0}
# cudnn_lenet has no activation between its convolutions and a 400k-weight fc1; with
# Nesterov momentum, 0.05 sits at the edge of stability for it (one run of the 10-epoch
# recipe diverged at step 1257, another was at 97.4 % after 3 of 10 epochs), so its SGD
# default is the cudnn-training sample's base rate: 99.17 % in 10 epochs, loss falling smoothly.
MODEL_SGD_LR = {"cudnn_lenet": 0.01}
# Models trained with another recipe by default: PyTorch's examples/mnist network is trained
# there with Adadelta (lr 1.0), StepLR (gamma 0.7 per epoch) and the NLL of its log_softmax.
MODEL_RECIPES = {"mnist_net": {"optimizer": "adadelta", "schedule": "step", "weight_decay": 0.0, "loss": "nll"}}


def default_lr(optimizer, model):
    """The CLI's learning rate when --lr is not given."""
    if optimizer == "sgd" and model in MODEL_SGD_LR:
        return MODEL_SGD_LR[model]
    return DEFAULT_LR[optimizer]


def recipe_optimizer(model, optimizer=None, lr=None, momentum=None, weight_decay=None):
    """The optimizer `pylenet train --model MODEL` uses, with any of these flags overriding it."""
    from pylenet import optim
    recipe = {**DEFAULTS, **MODEL_RECIPES.get(model, {})}
    optimizer = optimizer or recipe["optimizer"]
    momentum = recipe["momentum"] if momentum is None else momentum
    weight_decay = recipe["weight_decay"] if weight_decay is None else weight_decay
    lr = default_lr(optimizer, model) if lr is None else lr
    if optimizer == "sgd":
        return optim.SGD(lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if optimizer == "adam":
        return optim.Adam(lr, weight_decay=weight_decay)
    return optim.Adadelta(lr, weight_decay=weight_decay)


def _check_data_folder(args):
    if args.data is not None and not os.path.isdir(args.data):
        raise ValueError(f"--data {args.data}: no such folder")


def _load_split(name, args, train):
    from pylenet import datasets
    try:
        return datasets.load(name, root=args.data, train=train)
    except datasets.DatasetError as e:  # the library's advice names its argument; here it is a flag
        raise datasets.DatasetError(f"{e}\n(On the command line: --data DIR names that folder.)") from None


def _check_train_args(args):
    """Everything the command line can refuse, refused before any data is read or work done."""
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--limit", args.limit),
                    ("--threads", args.threads)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be at least 1, got {v}")
    _check_data_folder(args)
    save = args.save or f"{args.model}-{args.dataset}.npz"
    for flag, path in (("--save", save), ("--checkpoint", args.checkpoint), ("--history", args.history)):
        if path is not None:
            check_target(path, flag)
    if args.resume is not None and not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume}: no such checkpoint")
    if args.plot is not None:
        if not os.path.isdir(args.plot):
            raise ValueError(f"--plot {args.plot}: no such folder")
        from pylenet import viz
        viz._matplotlib("pylenet train --plot")  # no matplotlib: said now, not after the first epoch
    for flag, path in (("--save", save), ("--checkpoint", args.checkpoint)):
        continuing = args.resume is not None and path and os.path.abspath(path) == os.path.abspath(args.resume)
        if path and os.path.exists(path) and not args.force and not continuing:
            raise ValueError(f"{path} exists; pass --force to overwrite it (or --save another path)")
    return save


def _cmd_train(args):
    import pylenet
    from pylenet import models, optim
    from pylenet import functional as F
    from pylenet.training import format_epoch

    save = _check_train_args(args)
    if args.threads:
        pylenet.set_num_threads(args.threads)
    train_set = _load_split(args.dataset, args, True)
    test_set = _load_split(args.dataset, args, False)
    if args.limit:
        train_set = train_set.subset(args.limit)
    model = models.create(args.model, seed=args.seed)
    model.normalization = (train_set.mean, train_set.std)
    recipe = {**DEFAULTS, "loss": "cross_entropy", **MODEL_RECIPES.get(args.model, {})}
    for key in ("optimizer", "schedule", "weight_decay", "momentum", "epochs"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    loss = F.nll_loss if recipe["loss"] == "nll" else F.cross_entropy
    opt = recipe_optimizer(args.model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    sched = {"constant": optim.ConstantLR(), "cosine": optim.CosineLR(), "step": optim.StepLR(1, 0.7),
             "inv": optim.InvLR()}[args.schedule]
    print(f"training {args.model} on {args.dataset} ({len(train_set)} images): {args.epochs} epochs, batch "
          f"{args.batch_size}, {opt}, schedule {args.schedule}, seed {args.seed}, "
          f"{pylenet.get_num_threads()} threads", flush=True)
    # Every finished epoch is written to the checkpoint (by default the --save file), so Ctrl-C
    # or a crash loses at most the epoch in progress, and --resume continues exactly.
    ckpt = args.checkpoint or save
    seen = []
    # train() draws its bars only on a terminal (progress= below) and writes each epoch's line
    # above them; the CLI prints that line on stdout wherever it is not seen so (no bars, or
    # stdout going to a file), so each epoch is one line in every place.
    bar_on_screen = not args.quiet and sys.stderr.isatty() and sys.stdout.isatty()

    # --plot: the curves redrawn after every epoch, with a resumed run's earlier epochs.
    earlier = []
    if args.plot and args.resume:
        from pylenet.checkpoint import read_extra
        earlier = list(((read_extra(args.resume).get("history") or {}).get("epochs")) or [])
    if args.plot:
        print(f"drawing the loss and accuracy curves in {os.path.join(args.plot, 'history.png')} after every "
              "epoch", flush=True)

    def plot_curves():
        from pylenet import viz
        target = os.path.join(args.plot, "history.png")
        try:  # a picture that cannot be drawn must not stop the training
            viz.plot_history({"args": {"model": args.model, "dataset": args.dataset},
                              "history": {"epochs": earlier + seen}}, target)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"pylenet: warning: could not draw {target}: {e}", file=sys.stderr, flush=True)

    interrupted = []

    def on_epoch(r):
        seen.append(r)
        if not bar_on_screen:
            print(format_epoch(r, args.epochs), flush=True)
        if args.plot:
            try:
                plot_curves()
            except KeyboardInterrupt:  # the epoch is not in the checkpoint yet: stop once it is
                interrupted.append(r["epoch"])
                return False

    def write_history(records, total):
        if args.history:
            from pylenet.atomic import write_atomic
            record = {"args": {k: v for k, v in vars(args).items() if k != "func"},
                      "history": {"epochs": records}, "total_seconds": total}
            write_atomic(args.history, lambda f: json.dump(record, f, indent=2), text=True)

    t0 = time.perf_counter()
    try:
        history = pylenet.train(model, train_set, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                                device=args.device, schedule=sched, loss=loss, eval_set=test_set, seed=args.seed,
                                progress=not args.quiet and sys.stderr.isatty(), on_epoch=on_epoch, checkpoint=ckpt, resume=args.resume,
                                checkpoint_extra={"dataset": args.dataset})
        if interrupted:  # Ctrl-C while the curves were drawn, reported once the epoch was saved
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        write_history(seen, time.perf_counter() - t0)
        if seen:
            print(f"pylenet: interrupted in epoch {seen[-1]['epoch'] + 1}; epoch {seen[-1]['epoch']} is saved in "
                  f"{ckpt} (continue with --resume {ckpt})", file=sys.stderr)
        else:
            print("pylenet: interrupted before the first epoch finished; nothing was saved", file=sys.stderr)
        return 130
    total = time.perf_counter() - t0
    final = history.epochs[-1]
    if os.path.abspath(ckpt) != os.path.abspath(save):
        model.save(save, optimizer=opt, extra={"dataset": args.dataset, "history": history.to_dict()})
    done = len(seen)
    print(f"test accuracy {final['eval_accuracy']:.2%} after {final['epoch']} epochs, {total:.1f} s "
          f"({total / max(done, 1):.2f} s/epoch); saved {save}")
    write_history(history.to_dict()["epochs"], total)
    return 0


def _cmd_eval(args):
    import pylenet

    _check_data_folder(args)
    model = pylenet.load(args.checkpoint)
    name = args.dataset
    if name is None:
        import numpy as np
        with np.load(args.checkpoint, allow_pickle=False) as z:  # load() has checked that meta is well-formed
            name = (json.loads(str(z["meta"])).get("extra") or {}).get("dataset", "mnist")
        if name not in ("mnist", "fashion-mnist"):
            raise ValueError(f"{args.checkpoint} names no dataset this command knows ({name!r}); pass --dataset")
    test_set = _load_split(name, args, False)
    res = pylenet.evaluate(model, test_set, device=args.device)
    print(f"{args.checkpoint}: {name} test accuracy {res['accuracy']:.2%}, loss {res['loss']:.4f} "
          f"({len(test_set)} images)")
    return 0


def _cmd_predict(args):
    """Every input is reported: a class per image on stdout, an error per unreadable file on
    stderr; the exit status is 1 if any file failed."""
    import numpy as np

    import pylenet
    from pylenet.images import load_images

    model = pylenet.load(args.checkpoint)
    shape = getattr(model, "input_shape", None)
    if not shape or len(shape) != 3:
        raise ValueError(f"{args.checkpoint}: the model's input shape is {shape}, not an image (C, H, W)")
    h, w = shape[1:]
    names, imgs, failed = [], [], 0
    for path in args.images:
        try:
            loaded = load_images(path, (h, w))
        except (ValueError, OSError) as e:
            failed += 1
            if isinstance(e, OSError) and e.strerror:
                msg = f"{path}: {e.strerror}"
            else:
                msg = str(e) if path in str(e) else f"{path}: {e}"
            print(f"pylenet: error: {msg}", file=sys.stderr, flush=True)
            continue
        for name, img in loaded:
            names.append(name)
            imgs.append(img)
    if imgs:
        x = np.stack(imgs)[:, None]
        if model.normalization:
            mean, std = model.normalization
            x = (x - mean) / std
        ids, probs = model.predict(x, return_probs=True, device=args.device)
        for name, i, p in zip(names, ids, probs):
            print(f"{name}: {int(i)} (p={p[i]:.3f})")
    if failed:
        print(f"pylenet: {failed} of {len(args.images)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _plot_dataset(args):
    """The dataset a plot command uses: --dataset, else the one the checkpoint was trained on."""
    if args.dataset:
        return args.dataset
    from pylenet.checkpoint import read_extra
    name = read_extra(args.checkpoint).get("dataset", "mnist")
    if name not in ("mnist", "fashion-mnist"):
        raise ValueError(f"{args.checkpoint} names no dataset this command knows ({name!r}); pass --dataset")
    return name


def _plot_classes(name):
    from pylenet import datasets
    return datasets.FASHION_MNIST_CLASSES if name == "fashion-mnist" else datasets.MNIST_CLASSES


def _cmd_plot(args):
    """Each picture is checked for (matplotlib, the output's folder, the input files) before
    any model or data is read."""
    import pylenet
    from pylenet import viz

    viz._matplotlib(f"pylenet plot {args.what}")
    viz._check_out(args.out, f"pylenet plot {args.what}")
    if args.what == "history":
        viz.plot_history(args.history, args.out)
        print(f"wrote {args.out}: the loss and accuracy curves of {args.history}")
        return 0
    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"{args.checkpoint}: no such checkpoint")
    if args.what in ("maps", "confusion", "worst"):
        _check_data_folder(args)
    model = pylenet.load(args.checkpoint)
    if args.what == "filters":
        viz.plot_filters(model, args.out, layer=args.layer)
        layer = args.layer or viz.conv_layers(model)[0][0]
        print(f"wrote {args.out}: the filters of layer {layer} of {args.checkpoint}")
        return 0
    name = _plot_dataset(args)
    if args.what == "maps":
        import re
        shape = getattr(model, "input_shape", None)
        if not shape or len(shape) != 3:
            raise ValueError(f"{args.checkpoint}: the model's input shape is {shape}, not an image (C, H, W)")
        test = re.fullmatch(r"test:(\d+)", args.image)
        label = None
        if test and not os.path.exists(args.image):  # the N-th image of the test split
            data = _load_split(name, args, False)
            i = int(test.group(1))
            if i >= len(data):
                raise ValueError(f"{args.image}: the {name} test split has {len(data)} images (0 to {len(data) - 1})")
            image, label = data.images[i] * data.std + data.mean, int(data.labels[i])  # pixels in [0, 1]
        else:
            from pylenet.images import load_image
            if not os.path.isfile(args.image):
                raise ValueError(f"{args.image}: no such image file (or test:N for the N-th test image)")
            image = load_image(args.image, tuple(shape[1:]))
        viz.plot_feature_maps(model, image, args.out, normalized=False, label=label, classes=_plot_classes(name))
        print(f"wrote {args.out}: the feature maps of {args.image} in {args.checkpoint}")
        return 0
    data = _load_split(name, args, False)
    if args.what == "confusion":
        m, acc = viz.confusion_matrix(model, data)
        viz.plot_confusion(model, data, args.out)
        print(f"wrote {args.out}: the confusion matrix of {args.checkpoint} on the {name} test split "
              f"({len(data)} images, accuracy {acc:.2%})")
        return 0
    if args.count < 1:
        raise ValueError(f"-n must be at least 1, got {args.count}")
    viz.plot_worst(model, data, args.out, n=args.count)
    print(f"wrote {args.out}: the {min(args.count, len(data))} highest-loss {name} test images of {args.checkpoint}")
    return 0


def _cmd_speedrun(args):
    from pylenet.speedrun import reference_epoch, speedrun, summary

    _check_data_folder(args)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds}: expected whole numbers separated by commas, e.g. 0,1,2") from None
    data = (_load_split("mnist", args, True), _load_split("mnist", args, False))  # not timed
    # A short warm-up first (threads started, memory touched), so no timed run pays for it.
    from pylenet import models, train
    train(models.lenet_bn(), data[0].subset(2048), epochs=1, progress=False, device=args.device)
    runs = []
    for seed in seeds:
        r = speedrun(seed=seed, device=args.device, data=data)
        runs.append(r)
        print(f"seed {seed}: test accuracy {r['accuracy']:.2%} after {r['seconds']:.2f} s of training", flush=True)
    reference = reference_epoch(device=args.device, data=data) if args.compare else None
    out = summary(runs, reference)
    if reference is not None:
        print(f"one plain lenet5 epoch (batch 64) on the same machine: {reference:.2f} s; the speedrun's median "
              f"takes {out['ratio_to_reference']:.2f} times that")
    print(json.dumps({"accuracy": round(out["accuracy"], 4), "seconds": round(out["seconds"], 3),
                      **({"ratio_to_lenet5_epoch": round(out["ratio_to_reference"], 3)} if reference else {})}))
    return 0


def _cmd_export_onnx(args):
    import pylenet
    from pylenet import onnx as plonnx

    plonnx._require_onnx()  # before anything is read: say what to install
    check_target(args.out, "export-onnx")
    if os.path.exists(args.out) and not args.force:
        raise ValueError(f"{args.out} exists; pass --force to overwrite it")
    model = pylenet.load(args.checkpoint)
    proto = plonnx.export(model, args.out, opset=args.opset)
    shape = ", ".join(str(d.dim_param or d.dim_value) for d in proto.graph.input[0].type.tensor_type.shape.dim)
    norm = f"; inputs normalised with mean {model.normalization[0]}, std {model.normalization[1]} first" \
        if getattr(model, "normalization", None) else ""
    print(f"wrote {args.out}: {len(proto.graph.node)} ONNX operators (opset {args.opset}), input 'input' ({shape}), "
          f"output 'output'{norm}")
    return 0


def _cmd_export_cudnn(args):
    import pylenet
    from pylenet.models import export_cudnn_training

    paths = export_cudnn_training(pylenet.load(args.checkpoint), args.folder)
    print(f"wrote {len(paths)} cudnn-training weight files to {args.folder}")
    return 0


def _cmd_import_cudnn(args):
    from pylenet.models import MNIST_NORMALIZATION, import_cudnn_training

    model = import_cudnn_training(args.folder)
    model.normalization = MNIST_NORMALIZATION
    model.save(args.save, extra={"dataset": "mnist"})
    print(f"imported cudnn-training weights from {args.folder} into {args.save}")
    return 0


def _cmd_bench(args):
    from pylenet import bench
    return bench.main(args.bench_args)


def build_parser():
    from pylenet.models import MODELS

    import pylenet
    parser = argparse.ArgumentParser(prog="pylenet", description="pylenet: small-CNN training runtime")
    parser.add_argument("--version", action="version", version=f"pylenet {pylenet.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show what was built and what is used")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("summary", help="layers, FLOPs and the memory plan of a model or a checkpoint")
    p.add_argument("source", nargs="?", default=None, metavar="MODEL_OR_CHECKPOINT",
                   help=f"a model ({', '.join(sorted(MODELS))}; default lenet5) or a saved .npz")
    p.add_argument("--model", default=None, choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("train", help="train a model and save it")
    p.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data", default=None, help="folder with the IDX files (default: $PYLENET_DATA, cache, download)")
    p.add_argument("--epochs", type=int, default=None, help=f"default {DEFAULTS['epochs']}")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--optimizer", default=None, choices=["sgd", "adam", "adadelta"],
                   help="default sgd (adadelta for mnist_net)")
    p.add_argument("--lr", type=float, default=None, help="default: 0.05 sgd (0.01 for cudnn_lenet), 0.001 adam, 1.0 adadelta")
    p.add_argument("--momentum", type=float, default=None, help=f"SGD (Nesterov) momentum, default {DEFAULTS['momentum']}")
    p.add_argument("--weight-decay", type=float, default=None, help=f"default {DEFAULTS['weight_decay']} (0 for mnist_net)")
    p.add_argument("--schedule", default=None, choices=["constant", "cosine", "step", "inv"],
                   help="default cosine (step, gamma 0.7 per epoch, for mnist_net)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--save", default=None, help="checkpoint path (default: <model>-<dataset>.npz)")
    p.add_argument("--history", default=None, help="also write the per-epoch history as JSON here")
    p.add_argument("--checkpoint", default=None,
                   help="write every finished epoch here, to resume from (default: the --save path)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint, exactly, to --epochs in total")
    p.add_argument("--force", action="store_true", help="overwrite an existing --save / --checkpoint file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="draw the loss and accuracy curves in DIR/history.png after every epoch (needs matplotlib)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved model on a test split")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"],
                   help="default: the dataset the model was trained on")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="classify pictures (PNG, JPEG, BMP, ...: made MNIST-like) or .npy images")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("plot", help="pictures as PNG: curves, filters, feature maps, confusion matrix, worst images",
                       description='Pictures of a training run or a saved model, as PNG files (matplotlib: '
                                   'pip install "pylenet[viz]").')
    what = p.add_subparsers(dest="what", required=True, metavar="PICTURE")
    q = what.add_parser("history", help="loss and accuracy per epoch, from the JSON of pylenet train --history")
    q.add_argument("history", metavar="HISTORY.json")
    q.add_argument("out", metavar="OUT.png")
    q = what.add_parser("filters", help="a conv layer's filters (default the first)")
    q.add_argument("checkpoint")
    q.add_argument("out", metavar="OUT.png")
    q.add_argument("--layer", default=None, help="the conv layer's module path, e.g. conv2 or 3 (default: the first)")
    q = what.add_parser("maps", help="an image, every conv/pool layer's feature maps and the class probabilities")
    q.add_argument("checkpoint")
    q.add_argument("image", metavar="IMAGE",
                   help="a picture or .npy image (made MNIST-like as predict does), or test:N for the N-th test image")
    q.add_argument("out", metavar="OUT.png")
    for name, text in (("confusion", "the confusion matrix on a test split, with the accuracy"),
                       ("worst", "the test images with the highest loss, with true and predicted classes")):
        q = what.add_parser(name, help=text)
        q.add_argument("checkpoint")
        q.add_argument("out", metavar="OUT.png")
        if name == "worst":
            q.add_argument("-n", "--count", type=int, default=16, help="how many images (default 16)")
    for q in (what.choices["maps"], what.choices["confusion"], what.choices["worst"]):
        q.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"],
                       help="default: the dataset the model was trained on")
        q.add_argument("--data", default=None, help="folder with the IDX files")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("bench", help="pylenet vs PyTorch on the CPU (see benchmarks/)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("speedrun", help="MNIST to 99 %% in about one lenet5 epoch (the recipe: pylenet/speedrun.py)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (median reported); default 0")
    p.add_argument("--compare", action="store_true", help="also time one plain lenet5 epoch for the ratio")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=_cmd_speedrun)

    from pylenet.onnx import DEFAULT_OPSET
    p = sub.add_parser("export-onnx", help="write a saved model as an ONNX file (needs the onnx package)")
    p.add_argument("checkpoint")
    p.add_argument("out", metavar="OUT.onnx")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 13 or later (default {DEFAULT_OPSET})")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT.onnx")
    p.set_defaults(func=_cmd_export_onnx)

    p = sub.add_parser("export-cudnn", help="write a cudnn_lenet checkpoint as cudnn-training .bin files")
    p.add_argument("checkpoint")
    p.add_argument("folder")
    p.set_defaults(func=_cmd_export_cudnn)

    p = sub.add_parser("import-cudnn", help="read cudnn-training .bin files into a cudnn_lenet checkpoint")
    p.add_argument("folder")
    p.add_argument("--save", default="cudnn_lenet-imported.npz")
    p.set_defaults(func=_cmd_import_cudnn)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # the harness parses its own options
            from pylenet import bench
            return bench.main(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("pylenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pylenet summary | head`: the reader left; nothing to report
        try:
            sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush stays quiet
        except OSError:
            pass
        return 141
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError, ImportError) as e:  # ImportError: an extra
        print(f"pylenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
