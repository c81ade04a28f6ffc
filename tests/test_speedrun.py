"""pylenet.speedrun (issue 16): the recipe trains, reports what it promises, and the command runs.
The 99 % claim itself (median of 3 seeds) is measured by `pylenet speedrun --seeds 0,1,2
--compare`, not asserted here: the last digits depend on the SIMD path the sums take."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pylenet
from pylenet.speedrun import RECIPE, reference_epoch, speedrun, summary


def data_root():
    env = os.environ.get("PYLENET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


needs_mnist = pytest.mark.skipif(not (data_root() / "mnist" / "t10k-labels-idx1-ubyte.gz").exists(),
                                 reason="MNIST not found (set $PYLENET_DATA)")


@needs_mnist
def test_speedrun_learns_mnist_in_one_epoch():
    data = (pylenet.datasets.mnist(data_root(), train=True), pylenet.datasets.mnist(data_root(), train=False))
    r = speedrun(seed=0, data=data)
    assert set(r) == {"accuracy", "seconds", "seed", "device", "recipe"} and r["recipe"] == RECIPE
    assert r["accuracy"] >= 0.985, r  # 99.02 % with seed 0 on AVX-512; the same steps on any thread count
    assert 0 < r["seconds"] < 120
    again = speedrun(seed=0, data=data)
    assert again["accuracy"] == r["accuracy"]  # deterministic
    ref = reference_epoch(data=data)
    s = summary([r, again], ref)
    assert s["accuracy"] == r["accuracy"] and s["ratio_to_reference"] == pytest.approx(s["seconds"] / ref)


def test_recipe_is_what_the_docstring_says():
    assert RECIPE["model"] == "lenet_bn" and RECIPE["epochs"] == 1 and RECIPE["batch_size"] == 64
    assert pylenet.optim.make_schedule(RECIPE["schedule"]).config()["kind"] == "one_cycle"
    assert pylenet.optim.make_optimizer(RECIPE["optimizer"]).config()["lr"] == 0.2


@needs_mnist
def test_speedrun_command(tmp_path):
    env = dict(os.environ, PYLENET_DATA=str(data_root()))
    r = subprocess.run([sys.executable, "-m", "pylenet", "speedrun", "--seeds", "1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"accuracy", "seconds"} and out["accuracy"] >= 0.985
    r = subprocess.run([sys.executable, "-m", "pylenet", "speedrun", "--seeds", "0,x"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--seeds" in r.stderr and "Traceback" not in r.stderr
