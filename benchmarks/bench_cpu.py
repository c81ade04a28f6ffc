"""pylenet vs PyTorch on the CPU, side by side in one process: see pylenet/bench.py.

    python benchmarks/bench_cpu.py [--threads N] [--steps 100] [--repeats 5] [--epoch] [--no-torch]

Unlike `pylenet bench` (which prints only, unless --out), this script keeps each run in
benchmarks/results/<device>-<date>.json beside it.
"""
import os
import sys

from pylenet.bench import main

if __name__ == "__main__":
    sys.exit(main(results_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
