# Fixtures shared by the suite: `cpu_target` (every compiled CPU target this machine supports,
# restored afterwards), `threads` (1 and 2, restored afterwards), `impl` (the compiled package
# and the pure-Python reference, for checks both must pass), and a guard that every test leaves
# the compiled path's target and thread count as it found them.
from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

import gradclip
from gradclip import reference

# Hypothesis profiles. CI runs the default one; HYPOTHESIS_PROFILE=long (or
# --hypothesis-profile=long) is for nightly-style runs: tests that take their example count
# from the profile (the fuzzer in test_fuzz.py) run 20,000 examples instead of a few hundred.
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


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
