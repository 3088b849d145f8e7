# Fixtures shared by the suite: `cpu_target` (every compiled CPU target this machine supports,
# restored afterwards), `threads` (1 and 2, restored afterwards), `impl` (the compiled package
# and the pure-Python reference, for checks both must pass), and a guard that every test leaves
# the compiled path's target and thread count as it found them.
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

import gradclip
from gradclip import reference

# Hypothesis profiles (the README's "Development" section).
# "repro", the default, is what CI and the README's command run: every property test draws
# the same examples on every run and every machine (derandomize derives them from the test's
# name), no examples database is read or written, and nothing depends on timing (no deadline,
# no too_slow health check), so the suite can neither pass nor fail by luck.
# "explore" (HYPOTHESIS_PROFILE=explore, or --hypothesis-profile=explore) is for scheduled
# runs: new random examples every run, 20,000 for the tests that take their count from the
# profile (the fuzzer in test_fuzz.py). A failing example it finds is added to its test as an
# explicit @example before the fix, so the default run keeps checking it.
_NO_TIMING = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "repro",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_NO_TIMING,
)
settings.register_profile(
    "explore",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_NO_TIMING,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "repro")


def pytest_configure(config: pytest.Config) -> None:
    # The exhaustive grids (marker "exhaustive") are built only when GRADCLIP_EXHAUSTIVE=1, so
    # a default run neither collects nor deselects them; asking for the marker with -m turns
    # the variable on before the test modules are imported.
    if re.search(r"(?<!not )\bexhaustive\b", config.getoption("markexpr") or ""):
        os.environ["GRADCLIP_EXHAUSTIVE"] = "1"


@pytest.fixture(params=gradclip.available_cpu_targets())
def cpu_target(request: pytest.FixtureRequest) -> Iterator[str]:
    """Switch the compiled path to each available CPU target in turn."""
    previous = gradclip.cpu_target()
    gradclip._set_cpu_target(request.param)
    assert gradclip.cpu_target() == request.param
    try:
        yield request.param
    finally:
        gradclip._set_cpu_target(previous)


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the compiled path with 1 and with 2 threads."""
    if request.param > 1 and not gradclip._core.have_openmp():
        pytest.skip("built without OpenMP: every call runs on one thread")
    previous = gradclip.get_num_threads()
    gradclip.set_num_threads(request.param)
    assert gradclip.get_num_threads() == request.param
    try:
        yield request.param
    finally:
        gradclip.set_num_threads(previous)


@pytest.fixture(params=["compiled", "reference"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test: behaviour both implementations must share."""
    return gradclip if request.param == "compiled" else reference


@pytest.fixture(autouse=True)
def _config_restored() -> Iterator[None]:
    target, threads = gradclip.cpu_target(), gradclip.get_num_threads()
    yield
    assert gradclip.cpu_target() == target, "a test left the CPU target switched"
    assert gradclip.get_num_threads() == threads, "a test left the thread count changed"
