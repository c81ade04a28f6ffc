"""Fuzzing in the test suite (issue 13): hypothesis feeds each target of fuzz_targets.py a few
hundred inputs (derandomized, so a CI run is repeatable; ``PYLENET_FUZZ_EXAMPLES`` scales the
count). The long campaign, with crash and hang detection, is ``python tests/fuzz_campaign.py``.
"""
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

import fuzz_targets as T  # noqa: E402

EXAMPLES = {"idx": 1500, "image": 1500, "checkpoint": 400, "cudnn": 300, "ops": 2000, "train": 600}
# Hostile inputs make NumPy warn (overflow in a cast, complex to real) in the harness itself.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::numpy.exceptions.ComplexWarning")
SCALE = float(os.environ.get("PYLENET_FUZZ_EXAMPLES", "1"))


def _fuzz_test(cls):
    target = cls()

    @settings(max_examples=max(1, int(EXAMPLES[target.name] * SCALE)), deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    @given(target.strategy())
    def test(inp):
        target.run(inp)

    test.__name__ = f"test_fuzz_{target.name}"
    test.__doc__ = cls.__doc__
    return test


for _cls in T.TARGETS:
    globals()[f"test_fuzz_{_cls.name}"] = _fuzz_test(_cls)
