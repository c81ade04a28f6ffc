"""pylenet.speedrun: MNIST to 99 % test accuracy in about the time of one plain lenet5 epoch.

The recipe (our choice, fixed; no test-time tricks, no augmentation, the test set used only
to score the result):
  - network: ``models.lenet_bn`` (a LeNet with batch norm after each convolution);
  - one epoch of the 60,000 training images in batches of 64, shuffled by the seed;
  - SGD, Nesterov momentum 0.9, weight decay 1e-3, peak learning rate 0.2;
  - ``optim.OneCycleLR(pct_start=0.25)``: up from 0.008 over the first quarter, then down.
``seconds`` is the time of ``pylenet.train`` only (reading the data is not timed).
"""
import statistics
import time

__all__ = ["speedrun", "reference_epoch", "RECIPE"]

RECIPE = {"model": "lenet_bn", "epochs": 1, "batch_size": 64,
          "optimizer": {"kind": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
          "schedule": {"kind": "one_cycle", "pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4}}


def _data(root):
    from . import datasets
    return datasets.mnist(root, train=True), datasets.mnist(root, train=False)


def speedrun(seed=0, device="cpu", root=None, data=None):
    """Trains the recipe once and returns {"accuracy", "seconds", "seed", "device", "recipe"}.

    root: the MNIST folder (default: pylenet.datasets' search); data: (train, test) Datasets
    already read, for several runs in one process."""
    from . import models, optim
    from .training import evaluate, train
    train_set, test_set = data or _data(root)
    model = models.create(RECIPE["model"], seed=seed)
    opt = optim.make_optimizer(RECIPE["optimizer"])
    sched = optim.make_schedule(RECIPE["schedule"])
    t0 = time.perf_counter()
    train(model, train_set, epochs=RECIPE["epochs"], batch_size=RECIPE["batch_size"], optimizer=opt, schedule=sched,
          seed=seed, device=device, progress=False)
    seconds = time.perf_counter() - t0
    accuracy = evaluate(model, test_set, device=device)["accuracy"]
    return {"accuracy": accuracy, "seconds": seconds, "seed": seed, "device": device, "recipe": RECIPE}


def reference_epoch(device="cpu", root=None, data=None, seed=0):
    """Seconds of one plain lenet5 epoch at batch 64 through pylenet.train (SGD with momentum,
    as the CLI's recipe): the yardstick the speedrun's time is compared with."""
    from . import models, optim
    from .training import train
    train_set, _ = data or _data(root)
    model = models.lenet5(seed=seed)
    t0 = time.perf_counter()
    train(model, train_set, epochs=1, batch_size=64, optimizer=optim.SGD(0.05, momentum=0.9, nesterov=True,
                                                                         weight_decay=5e-4),
          seed=seed, device=device, progress=False)
    return time.perf_counter() - t0


def summary(runs, reference=None):
    """The median accuracy and seconds of several runs (and their ratio to the reference)."""
    out = {"accuracy": statistics.median(r["accuracy"] for r in runs),
           "seconds": statistics.median(r["seconds"] for r in runs), "runs": len(runs)}
    if reference is not None:
        out["reference_epoch_seconds"] = reference
        out["ratio_to_reference"] = out["seconds"] / reference
    return out
