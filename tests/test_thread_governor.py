"""The rule that picks each step's worker count from measured step times
(csrc/core/thread_governor.h), fed simulated machines, and what it does in a real run:
counts change between steps, results do not."""
import numpy as np
import pytest

import pylenet
import pylenet._C as C
from pylenet import models, optim

TRIAL = 3  # ThreadGovernor::kTrialSteps


def simulate(gov, steps, seconds, items=2, log=None):
    """Runs `steps` steps; seconds(step, workers) is the simulated machine."""
    for i in range(steps):
        w = gov.threads
        if log is not None:
            log.append(w)
        gov.record(seconds(i, w), items(i) if callable(items) else items)


def idle(step, w):  # two free cores: 1 worker takes 1.9x as long
    return 0.002 * (1.9 if w == 1 else 1.0)


def busy(step, w):  # a neighbour on one core: all workers wait for the descheduled one
    return 0.0036 if w == 2 else 0.0033


def test_idle_machine_keeps_all_workers_after_one_trial():
    g = C.ThreadGovernor(2)
    simulate(g, 3000, idle)
    assert g.threads == 2
    assert g.steps_at[0] == TRIAL and g.trials == 1  # only the trial made at the start


def test_noisy_idle_machine_rarely_tries_fewer(rng):
    noise = rng.lognormal(0.0, 0.25, 5000)  # a shared machine: steps vary by tens of percent
    g = C.ThreadGovernor(2)
    simulate(g, 5000, lambda i, w: idle(i, w) * noise[i])
    assert g.threads == 2
    assert g.steps_at[0] <= 0.01 * 5000, g.steps_at


def test_a_neighbour_from_the_start_moves_to_one_worker_quickly():
    g, log = C.ThreadGovernor(2), []
    simulate(g, 2000, busy, log=log)
    assert g.threads == 1
    assert log.index(1) <= 12 and all(w == 1 for w in log[12:20])
    # it keeps checking whether the neighbour left, ever less often: a few % of the steps at most
    assert g.steps_at[1] <= 0.03 * 2000, g.steps_at


def test_a_neighbour_arriving_and_leaving_is_followed():
    log = []
    g = C.ThreadGovernor(2)
    machine = lambda i, w: busy(i, w) if 500 <= i < 1500 else idle(i, w)
    simulate(g, 3000, machine, log=log)
    assert log[400:500].count(2) == 100                    # idle: all workers
    assert log[500:1500].index(1) <= 20                     # found the neighbour within ~2 windows
    assert log[530:1500].count(1) >= 0.95 * 970
    back = log[1500:].index(2)
    assert back <= 600 and all(w == 2 for w in log[1500 + back + TRIAL:][:300])  # back within the longest retry


def test_hill_climbs_on_more_cores():
    def machine(i, w):  # 4 cores, one busy: 3 workers are best
        return {1: 3.0, 2: 1.6, 3: 1.1, 4: 1.5}[w] * 1e-3
    log = []
    g = C.ThreadGovernor(4)
    simulate(g, 1000, machine, log=log)
    assert g.threads == 3
    assert log[200:].count(3) >= 0.95 * 800


def test_steps_of_another_width_are_not_compared():
    # an epoch's short last batch (one chunk instead of two), much faster: not a slowdown, no restart
    g = C.ThreadGovernor(2)
    simulate(g, 3000, lambda i, w: idle(i, w) * (0.3 if i % 100 == 99 else 1.0),
             items=lambda i: 1 if i % 100 == 99 else 2)
    assert g.trials == 1 and g.threads == 2
    # a width that persists is adopted: measured afresh (one more initial trial)
    simulate(g, 100, idle, items=4)
    assert g.trials == 2


def test_nothing_to_decide():
    g = C.ThreadGovernor(1)
    simulate(g, 200, lambda i, w: 1e-3)
    assert g.threads == 1 and g.trials == 0 and g.steps_at == [200]
    g = C.ThreadGovernor(2)
    simulate(g, 200, busy, items=1)  # one chunk: nothing runs in parallel
    assert g.threads == 2 and g.trials == 0


def test_set_num_threads_adaptive_argument():
    assert pylenet.build_info()["adaptive_threads"] is True
    n = pylenet.get_num_threads()
    try:
        pylenet.set_num_threads(n, adaptive=False)
        assert pylenet.build_info()["adaptive_threads"] is False
        pylenet.set_num_threads(n)  # None: left as it is
        assert pylenet.build_info()["adaptive_threads"] is False
        with pytest.raises(TypeError, match="adaptive must be True, False or None"):
            pylenet.set_num_threads(n, adaptive="yes")
    finally:
        pylenet.set_num_threads(n, adaptive=True)
    assert pylenet.build_info()["adaptive_threads"] is True


def _train(adaptive, x, y, init):
    pylenet.set_num_threads(2, adaptive=adaptive)
    m = models.lenet5()
    m.load_state_dict(init)
    step = pylenet.compile(m, optimizer=optim.SGD(0.05, momentum=0.9), batch_size=64)
    for i in range(0, len(x), 64):
        step(x[i:i + 64], y[i:i + 64])
    return m.state_dict(), step.executor(x.shape[1:]).thread_counts(True)


def test_counts_change_between_steps_and_results_do_not(rng):
    x = rng.standard_normal((64 * 24, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    init = models.lenet5().state_dict()
    previous = pylenet.get_num_threads()
    try:
        fixed, fixed_counts = _train(False, x, y, init)
        adaptive, counts = _train(True, x, y, init)
    finally:
        pylenet.set_num_threads(previous, adaptive=True)
    assert fixed_counts == [0, 0]  # pinned: nothing measured
    assert counts[0] >= TRIAL and sum(counts) == 24  # the trial at the start ran on one worker
    for k in fixed:
        assert np.array_equal(fixed[k], adaptive[k]), k
