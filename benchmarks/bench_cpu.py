"""pylenet vs PyTorch on the CPU, side by side in one process: see pylenet/bench.py.

    python benchmarks/bench_cpu.py [--threads N] [--steps 100] [--repeats 5] [--epoch] [--no-torch]
"""
import sys

from pylenet.bench import main

if __name__ == "__main__":
    sys.exit(main())
