"""The long fuzzing campaign over pylenet's inputs (issue 13), beside the short one in the suite.

    PYTHONPATH=. python tests/fuzz_campaign.py --inputs 1000000 --jobs 2 --report fuzz.json

Every target of ``fuzz_targets.py`` gets its share of the inputs (by weight: a checkpoint costs
more than an IDX header). Workers are child processes: a crash (a signal, or any exit
without a report) and a hang (no progress for ``--hang`` seconds) are findings like a broken
contract, and the worker is restarted past the input. Input ``i`` of a target is drawn from
``default_rng([seed, i])``, so every finding is reproduced by

    PYTHONPATH=. python tests/fuzz_campaign.py --replay TARGET:I [--seed S]

In normal builds each worker's address space is capped (``--memory``, 4 GiB), so a small
input that makes pylenet allocate gigabytes shows as a MemoryError finding. Under
AddressSanitizer (LD_PRELOAD of libasan) the cap is off and ASan's reports end the worker:
they are crashes here.
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WEIGHTS = {"idx": 30, "image": 25, "ops": 25, "cudnn": 7, "checkpoint": 8, "train": 5}


def _targets():
    import fuzz_targets as T
    return {cls.name: cls for cls in T.TARGETS}


def _worker(name, seed, lo, hi, progress, findings, memory):
    if memory and "asan" not in os.environ.get("LD_PRELOAD", ""):
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np

    import fuzz_targets as T
    import pylenet
    pylenet.set_num_threads(1)  # the campaign's parallelism is its workers
    target = _targets()[name]()
    try:  # (a forked worker ends without atexit handlers: its scratch folder is removed here)
        for i in range(lo, hi):
            progress.value = i
            inp = target.draw(np.random.default_rng([seed, i]))
            try:
                target.run(inp)
            except T.Finding as f:
                findings.put((name, i, "contract", str(f)[:500], repr(inp)[:2000]))
            except MemoryError as e:
                findings.put((name, i, "memory", f"MemoryError: {e}"[:500], repr(inp)[:2000]))
            except BaseException as e:  # noqa: BLE001 - a harness error is a finding too
                findings.put((name, i, "harness", "".join(traceback.format_exception_only(e))[:500],
                              repr(inp)[:2000]))
        progress.value = hi
    finally:
        T.remove_scratch()


def _run_target(name, n, args, findings):
    """Runs inputs [0, n) of a target in ``args.jobs`` child processes (one range each),
    restarting a worker past an input that crashed or hung it."""
    ctx = mp.get_context("fork")
    ranges = [[n * j // args.jobs, n * (j + 1) // args.jobs] for j in range(args.jobs)]
    running, found = {}, []
    while True:
        for j, (lo, hi) in enumerate(ranges):
            if lo < hi and j not in running:
                progress = ctx.Value("q", lo)
                p = ctx.Process(target=_worker, args=(name, args.seed, lo, hi, progress, findings, args.memory),
                                daemon=True)
                p.start()
                running[j] = [p, progress, lo, time.monotonic()]
        if not running:
            return found
        time.sleep(0.05)
        while not findings.empty():  # drained as they come: a full pipe would block the workers' exit
            found.append(findings.get())
        for j, (p, progress, last, last_t) in list(running.items()):
            hi = ranges[j][1]
            if p.is_alive():
                if progress.value != last:
                    running[j][2:] = [progress.value, time.monotonic()]
                elif time.monotonic() - last_t > args.hang:
                    p.kill()
                    p.join()
                    found.append((name, progress.value, "hang", f"no progress for {args.hang} s", ""))
                    ranges[j][0] = progress.value + 1
                    del running[j]
                continue
            p.join()
            if p.exitcode != 0 or progress.value < hi:
                found.append((name, progress.value, "crash", f"worker exit code {p.exitcode}", ""))
                ranges[j][0] = progress.value + 1
            else:
                ranges[j][0] = hi
            del running[j]


def campaign(args):
    import pylenet
    names = args.targets.split(",") if args.targets else list(WEIGHTS)
    total_w = sum(WEIGHTS[n] for n in names)
    counts = {n: max(1, args.inputs * WEIGHTS[n] // total_w) for n in names}
    ctx = mp.get_context("fork")
    findings = ctx.Queue()
    report = {"machine": {"platform": platform.platform(), "cpu": pylenet.build_info()["simd"]},
              "pylenet": pylenet.build_info()["version"], "seed": args.seed,
              "sanitizer": "asan" in os.environ.get("LD_PRELOAD", ""), "targets": {}}
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        n = counts[name]
        got = _run_target(name, n, args, findings)
        time.sleep(0.2)  # the last workers' queue feeders have flushed by now
        while not findings.empty():
            got.append(findings.get())
        seconds = time.perf_counter() - t0
        kinds = {}
        for f in got:
            kinds.setdefault(f[3].split("\n")[0][:120], []).append(f)
        report["targets"][name] = {
            "inputs": n, "seconds": round(seconds, 1), "inputs_per_second": round(n / seconds, 1),
            "findings": len(got),
            "distinct": [{"kind": v[0][2], "message": k, "count": len(v), "first_input": v[0][1],
                          "example": v[0][4][:600]} for k, v in kinds.items()]}
        print(f"{name:>10}: {n:>8,} inputs in {seconds:7.1f} s, {len(got)} findings", flush=True)
        for d in report["targets"][name]["distinct"]:
            print(f"            {d['count']:>6} x {d['kind']}: {d['message']}  (input {name}:{d['first_input']})")
    report["inputs"] = sum(counts.values())
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["findings"] = sum(t["findings"] for t in report["targets"].values())
    print(f"total: {report['inputs']:,} inputs, {report['findings']} findings, {report['seconds']} s")
    if args.report:
        from pylenet.atomic import write_atomic
        write_atomic(args.report, lambda f: json.dump(report, f, indent=2), text=True)
    return 1 if report["findings"] else 0


def replay(args):
    import numpy as np
    name, _, index = args.replay.partition(":")
    target = _targets()[name]()
    inp = target.draw(np.random.default_rng([args.seed, int(index)]))
    print(f"{name}:{index} = {inp!r}")
    target.run(inp)
    print("no finding")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs over all targets (default 1,000,000)")
    ap.add_argument("--targets", default=None, help=f"comma-separated subset of {','.join(WEIGHTS)}")
    ap.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang", type=float, default=60.0, help="seconds without progress that count as a hang")
    ap.add_argument("--memory", type=int, default=4 << 30, help="address-space cap per worker in bytes (0: none)")
    ap.add_argument("--report", default=None, help="write the counts and findings as JSON here")
    ap.add_argument("--replay", default=None, metavar="TARGET:I", help="run one input in this process")
    args = ap.parse_args(argv)
    return replay(args) if args.replay else campaign(args)


if __name__ == "__main__":
    sys.exit(main())
