# Covers: the stateful clippers gradclip.adaptive.AutoClip and ZClip against their twins in
# gradclip.reference, and the behaviour both must share (the `impl` fixture of this file):
#   - sequences of steps on random gradients with spikes, over dtypes, layouts, mixed lists
#     with None entries, norm types and every option: equal clipped flags, norms within 1e-12,
#     thresholds and coefficients within 1e-9, writes exactly the documented scaling by the
#     compiled path's own threshold and norm (and within the ulp budget of the reference);
#     bitwise-equal results and state with norm_type=inf (where both norms are exact);
#   - AutoClip's threshold is np.percentile(history, p) bit for bit; the history bound;
#   - ZClip's warm-up, spike thresholds for every mode / clip_option, the EMA update;
#   - state_dict: JSON round trip mid-run continues exactly as the clipper that never stopped,
#     state dicts load across the two implementations, bad state dicts are refused unchanged;
#   - non-finite norms in every nonfinite= mode (statistics never updated with them);
#   - bad arguments and bad grads: TypeError / ValueError, nothing written, state unchanged;
#   - GradientSet and generator input; every CPU target and thread count gives the same bits.
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from gc_helpers import (
    CONFIGS,
    DTYPE_PARAMS,
    LAYOUTS,
    assert_norm_close,
    assert_same_values,
    assert_ulp_close,
    configured,
    dtype_of,
    expected_scaled,
    make_array,
    snapshot,
    ulps_for,
)

import gradclip
from gradclip import NonFiniteNormError, adaptive
from gradclip import reference as ref
from gradclip._result import ClipResult

INF = math.inf
NAN = math.nan
IMPLS = {"compiled": adaptive, "reference": ref}

# Shapes of one "model": fixed across steps like real gradients; position 2 holds None.
SHAPES: list[tuple[int, ...] | None] = [(33,), (7, 5), None, (), (0, 3), (64,), (3, 17)]


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> Any:
    """The module whose AutoClip / ZClip are under test (behaviour both must share)."""
    return IMPLS[request.param]


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def step_values(rng: np.random.Generator, scale: float) -> list[np.ndarray | None]:
    return [None if s is None else rng.standard_normal(s) * scale for s in SHAPES]


def norm_scales(seed: int, steps: int, spikes: dict[int, float]) -> list[float]:
    """A noisy, slowly drifting norm scale per step, multiplied by ``spikes[step]``."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(0.0, 0.15, steps)) * np.linspace(1.0, 0.6, steps)
    return [float(b) * spikes.get(i, 1.0) for i, b in enumerate(base)]


def build(
    values: list[np.ndarray | None], dtypes: list[Any], layout: str
) -> list[np.ndarray | None]:
    return [
        None if v is None else make_array(v, dtypes[i % len(dtypes)], layout)
        for i, v in enumerate(values)
    ]


def copies(grads: list[Any]) -> list[Any]:
    return [None if g is None else np.array(g) for g in grads]


def assert_close(a: float, b: float, what: str, rel: float = 1e-9) -> None:
    assert isinstance(a, float) and isinstance(b, float), what
    if math.isnan(b) or math.isinf(b):
        assert a == b or (math.isnan(a) and math.isnan(b)), f"{what}: {a!r} != {b!r}"
    else:
        assert abs(a - b) <= rel * abs(b), f"{what}: {a!r} vs {b!r}"


def check_step(
    got: ClipResult,
    want: ClipResult,
    grads: list[Any],
    originals: list[Any],
    ref_grads: list[Any],
    p: float,
    eps: float,
    what: str,
) -> None:
    """One compiled step against the reference step on copies of the same gradients."""
    assert got.clipped == want.clipped, f"{what}: clipped {got.clipped} vs {want.clipped}"
    assert got.found_nonfinite == want.found_nonfinite, what
    assert got.tensor_norms is None
    assert_norm_close(got.total_norm, want.total_norm, p, f"{what} norm")
    assert_close(got.threshold, want.threshold, f"{what} threshold")
    assert_close(got.coef, want.coef, f"{what} coef")
    assert got.clipped == (got.total_norm > got.threshold)
    if got.clipped:
        assert got.coef == got.threshold / (got.total_norm + eps), what
    else:
        assert got.coef == 1.0, what
    for i, (a, o, r) in enumerate(zip(grads, originals, ref_grads, strict=True)):
        if a is None:
            continue
        if got.clipped:
            want_a = expected_scaled(o, got.threshold, got.total_norm, eps)
            assert_same_values(a, want_a, f"{what} [{i}] writes")
        else:
            assert a.tobytes() == o.tobytes(), f"{what} [{i}] written without clipping"
        assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{what} [{i}] vs reference")


def run_pair(
    make: Callable[[Any], Any],
    seed: int,
    steps: int,
    spikes: dict[int, float],
    dtypes: list[Any],
    layout: str,
    p: float,
    eps: float = 1e-6,
) -> tuple[Any, Any, list[Any]]:
    """Run the compiled and the reference clipper side by side; returns both and the results."""
    compiled, reference = make(adaptive), make(ref)
    rng = np.random.default_rng(seed)
    results = []
    for step, scale in enumerate(norm_scales(seed, steps, spikes)):
        values = step_values(rng, scale)
        grads = build(values, dtypes, layout)
        originals = copies(grads)
        ref_grads = build(values, dtypes, "C")
        got, want = compiled(grads), reference(ref_grads)
        check_step(got, want, grads, originals, ref_grads, p, eps, f"step {step}")
        results.append(got)
    return compiled, reference, results


def assert_states_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(y, float):
            assert_close(x, y, key)
        elif isinstance(y, list):
            assert len(x) == len(y), key
            for u, v in zip(x, y, strict=True):
                assert_close(u, v, key, 1e-12)
        else:
            assert x == y, key


# spikes in the warm-up, isolated, in a row, small; 1e3 keeps float16 finite
SPIKES = {3: 30.0, 31: 8.0, 32: 0.05, 40: 60.0, 41: 55.0, 50: 1e3}


# ---------------------------------------------------------------------------------------------
# compiled against reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
@pytest.mark.parametrize(("percentile", "history_size"), [(10.0, None), (50.0, 7), (100.0, None)])
def test_autoclip_against_reference(
    dtype_name: str, layout: str, percentile: float, history_size: int | None
) -> None:
    dtype = dtype_of(dtype_name)
    compiled, reference, results = run_pair(
        lambda m: m.AutoClip(percentile, history_size),
        seed_of("autoclip", dtype_name, layout, percentile),
        60,
        SPIKES,
        [dtype, np.dtype(np.float64)] if dtype_name == "float16" else [dtype],
        layout,
        2.0,
    )
    assert_states_close(compiled.state_dict(), reference.state_dict())
    clipped = [r.clipped for r in results]
    assert not clipped[0], "the first norm is its own threshold"
    if percentile == 100.0:
        assert not any(clipped), "the maximum of a history holding the norm never clips"
    else:
        assert clipped[40] and clipped[50], "large spikes must be clipped"
        assert any(clipped) and not all(clipped)


@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_grad_norm": None, "warmup_steps": 5},
        {"max_grad_norm": 0.5, "warmup_steps": 5, "clip_option": "mean"},
        {"max_grad_norm": None, "warmup_steps": 4, "mode": "percentile", "alpha": 0.9},
        {"max_grad_norm": 30.0, "z_thresh": 1.5, "eps": 0.0, "norm_type": 1.0},
    ],
    ids=["defaults", "no-max", "mean", "percentile-mode", "p1-eps0"],
)
def test_zclip_against_reference(dtype_name: str, layout: str, kwargs: dict[str, Any]) -> None:
    dtype = dtype_of(dtype_name)
    p = kwargs.get("norm_type", 2.0)
    compiled, reference, results = run_pair(
        lambda m: m.ZClip(**kwargs),
        seed_of("zclip", dtype_name, layout, sorted(kwargs.items())),
        60,
        SPIKES,
        [dtype],
        layout,
        p,
        kwargs.get("eps", 1e-6),
    )
    assert compiled.initialized and reference.initialized
    assert_states_close(compiled.state_dict(), reference.state_dict())
    if kwargs.get("max_grad_norm", 1.0) is None:
        warmup = kwargs["warmup_steps"]
        assert not any(r.clipped for r in results[:warmup]), "clipped during the warm-up"
        assert all(r.threshold == INF for r in results[:warmup])
        # (the warm-up spike at step 3 inflates the variance for long: step 40 may pass)
        assert results[50].clipped, "a 1000x spike must be clipped"
        assert not results[32].clipped, "a small norm is never a spike"


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.AutoClip(25.0, 9, norm_type=INF),
        lambda m: m.ZClip(warmup_steps=6, max_grad_norm=None, norm_type=INF),
        lambda m: m.ZClip(warmup_steps=3, max_grad_norm=40.0, norm_type=INF, clip_option="mean"),
        lambda m: m.ZClip(warmup_steps=3, norm_type=INF, mode="percentile", max_grad_norm=None),
    ],
    ids=["autoclip", "zclip", "zclip-mean-max", "zclip-percentile"],
)
def test_bitwise_with_exact_norms(make: Callable[[Any], Any]) -> None:
    """With p = inf both implementations get the same norm bits: everything else must match
    bit for bit (thresholds, coefficients, statistics, writes)."""
    compiled, reference = make(adaptive), make(ref)
    rng = np.random.default_rng(7)
    for step, scale in enumerate(norm_scales(7, 70, SPIKES)):
        values = step_values(rng, scale)
        grads = build(values, [np.float32, np.float64], "C")
        ref_grads = build(values, [np.float32, np.float64], "C")
        got, want = compiled(grads), reference(ref_grads)
        assert got == want, f"step {step}: {got} != {want}"
        for a, r in zip(grads, ref_grads, strict=True):
            assert a is None or a.tobytes() == r.tobytes(), f"step {step} writes"
        assert compiled.state_dict() == reference.state_dict(), f"step {step} state"


def test_same_bits_on_every_cpu_target_and_thread_count() -> None:
    outcomes = {}
    for target, threads in CONFIGS:
        with configured(target, threads):
            clippers = [adaptive.AutoClip(20.0), adaptive.ZClip(warmup_steps=5)]
            rng = np.random.default_rng(3)
            seen = []
            for scale in norm_scales(3, 40, SPIKES):
                # big enough to split into chunks over threads
                grads = [(rng.standard_normal(70001) * scale).astype(np.float32) for _ in "ab"]
                for clipper in clippers:
                    r = clipper(grads)
                    seen.append((r.total_norm, r.threshold, r.coef, r.clipped))
                seen.append(tuple(g.tobytes() for g in grads))
            outcomes[(target, threads)] = (seen, [c.state_dict() for c in clippers])
    first = next(iter(outcomes.values()))
    for cfg, outcome in outcomes.items():
        assert outcome == first, f"{cfg} differs from {CONFIGS[0]}"


# ---------------------------------------------------------------------------------------------
# AutoClip semantics
# ---------------------------------------------------------------------------------------------


def one(x: float) -> np.ndarray:
    """A gradient whose norm is exactly |x| for every norm type."""
    return np.array([x])


@pytest.mark.parametrize("history_size", [None, 37])
@pytest.mark.parametrize(
    "percentile", [1e-9, 0.5, 10.0, 33.3, 50.0, 66.6, 99.99, 100.0, 12.345678901234]
)
def test_autoclip_threshold_is_numpy_percentile(
    impl: Any, percentile: float, history_size: int | None
) -> None:
    """Bit for bit np.percentile of the (last ``history_size``) norms, the current one included
    (the compiled path keeps two heaps for an unbounded history, a sorted list otherwise)."""
    rng = np.random.default_rng(seed_of("pct", percentile))
    # a wide range, ties from a short set of values, zeros, and a drift so the order changes
    norms = np.concatenate(
        [rng.lognormal(0, 2, 250), rng.choice([0.0, 0.5, 1.0, 2.0], 100), np.linspace(9, 0, 50)]
    )
    rng.shuffle(norms[:350])
    clipper = impl.AutoClip(percentile, history_size)
    for i, n in enumerate(norms.tolist()):
        r = clipper(one(n))
        window = (
            norms[: i + 1] if history_size is None else norms[max(0, i + 1 - history_size) : i + 1]
        )
        want = float(np.percentile(window, percentile))
        assert r.threshold == want, f"step {i}: {r.threshold!r} != {want!r}"
        assert r.clipped == (n > want)
    assert clipper.history == tuple(window.tolist())


def test_autoclip_history_bound(impl: Any) -> None:
    clipper = impl.AutoClip(50.0, history_size=3)
    for n in [100.0, 1.0, 2.0]:
        clipper(one(n))
    assert clipper.history == (100.0, 1.0, 2.0)
    r = clipper(one(3.0))  # 100 falls out: median of (1, 2, 3)
    assert clipper.history == (1.0, 2.0, 3.0)
    assert r.threshold == 2.0 and r.clipped
    r = clipper(one(3.0))
    assert clipper.history == (2.0, 3.0, 3.0) and r.threshold == 3.0 and not r.clipped
    unbounded = impl.AutoClip(50.0)
    for n in [100.0, 1.0, 2.0, 3.0]:
        r = unbounded(one(n))
    assert r.threshold == 2.5 and len(unbounded.history) == 4


def test_autoclip_first_step_and_new_maximum_write_nothing(impl: Any) -> None:
    """The threshold is the norm itself here: PyTorch's min(1, ...) rule would scale by
    norm / (norm + eps); the clippers write nothing."""
    g = np.array([3.0, 4.0], np.float32)
    clipper = impl.AutoClip(100.0)
    for scale in [1.0, 2.0, 5.0]:
        g[...] = np.array([3.0, 4.0], np.float32) * scale
        before = g.tobytes()
        r = clipper(g)
        assert r.threshold == r.total_norm and not r.clipped and r.coef == 1.0
        assert g.tobytes() == before


def test_autoclip_zero_threshold_zeroes(impl: Any) -> None:
    """A history of zero norms gives threshold 0: the next gradient is scaled by exactly 0."""
    clipper = impl.AutoClip(10.0)
    for _ in range(20):
        assert not clipper(np.zeros(5, np.float32)).clipped
    g = [np.array([1.0, -2.0, 3.0], np.float32), np.array([-0.5], np.float16)]
    originals = copies(g)
    r = clipper(g)
    assert r.threshold == 0.0 and r.clipped and r.coef == 0.0
    for a, o in zip(g, originals, strict=True):
        assert not np.any(a) and np.array_equal(np.signbit(a), np.signbit(o))


# ---------------------------------------------------------------------------------------------
# ZClip semantics
# ---------------------------------------------------------------------------------------------


def test_zclip_warmup(impl: Any) -> None:
    norms = [2.0, 50.0, 1.0, 3.0, 4.0]  # a spike inside the warm-up is not clipped...
    clipper = impl.ZClip(warmup_steps=5, max_grad_norm=None)
    for i, n in enumerate(norms):
        assert not clipper.initialized
        r = clipper(one(n))
        assert not r.clipped and r.threshold == INF, f"step {i}"
    # ...but it enters the statistics: the population mean and variance of the warm-up norms
    assert clipper.initialized
    assert clipper.mean == math.fsum(norms) / 5
    assert clipper.var == pytest.approx(float(np.var(norms)), rel=1e-15)
    capped = impl.ZClip(warmup_steps=3, max_grad_norm=1.5)
    for n in [1.0, 2.0, 6.0]:
        r = capped(one(n))
        assert r.threshold == 1.5 and r.clipped == (n > 1.5)
    assert capped.state_dict()["mean"] == 3.0, "statistics use the pre-clip norms"


def loaded_zclip(impl: Any, mean: float, var: float, **kwargs: Any) -> Any:
    clipper = impl.ZClip(**kwargs)
    state = clipper.state_dict()
    state.update(warmup_norms=[], mean=mean, var=var)
    clipper.load_state_dict(state)
    return clipper


ADAPTIVE_2 = 1.0 + 2.5 * 0.25 / (4.0 / 2.5)  # norm 2: z = (2 - 1) / 0.25 = 4 > 2.5


@pytest.mark.parametrize(
    ("kwargs", "norm", "threshold", "ema_input"),
    [
        ({}, 2.0, ADAPTIVE_2, ADAPTIVE_2),
        ({"clip_option": "mean"}, 2.0, 1.0, 1.0),
        ({"mode": "percentile"}, 2.0, 1.625, 1.625),  # mean + 2.5 * std
        ({}, 1.5, INF, 1.5),  # z = 2: not a spike
        ({"mode": "percentile"}, 1.5, INF, 1.5),
        ({"max_grad_norm": 1.2}, 1.5, 1.2, 1.5),  # not a spike: the bound clips, the norm counts
        ({"max_grad_norm": 1.1}, 2.0, 1.1, ADAPTIVE_2),  # a spike, and the bound is lower
        ({}, 1e300, 1.0, 1.0),  # the larger the spike, the closer to the mean
    ],
)
def test_zclip_spike_threshold(
    impl: Any, kwargs: dict[str, Any], norm: float, threshold: float, ema_input: float
) -> None:
    clipper = loaded_zclip(impl, 1.0, 0.0625, **{"max_grad_norm": None, "eps": 0.0, **kwargs})
    g = one(norm)
    r = clipper(g)
    assert r.threshold == threshold
    assert r.clipped == (threshold < norm)
    assert g[0] == (norm * (threshold / norm) if r.clipped else norm)
    # mean first, then the variance around the updated mean (the authors' order)
    mean = 0.97 * 1.0 + (1.0 - 0.97) * ema_input
    assert clipper.mean == mean
    assert clipper.var == 0.97 * 0.0625 + (1.0 - 0.97) * (ema_input - mean) ** 2


def test_zclip_threshold_is_continuous_at_z_thresh(impl: Any) -> None:
    """adaptive_scaling clips a norm just above mean + z_thresh * std to just below it."""
    level = 1.0 + 2.5 * 0.25
    below = loaded_zclip(impl, 1.0, 0.0625, max_grad_norm=None, eps=0.0)(one(level))
    above = loaded_zclip(impl, 1.0, 0.0625, max_grad_norm=None, eps=0.0)(one(level * 1.001))
    assert not below.clipped
    assert above.clipped and level * 0.998 < above.threshold < level


def test_zclip_zero_variance_and_zero_eps(impl: Any) -> None:
    """Constant warm-up norms with eps=0: std + eps == 0 must not raise ZeroDivisionError."""
    clipper = impl.ZClip(warmup_steps=3, max_grad_norm=None, eps=0.0)
    for _ in range(4):
        assert not clipper(one(2.0)).clipped  # z = 0 / 0: not a spike
    r = clipper(one(3.0))  # z = 1 / 0 = inf: a spike, clipped to the mean
    assert r.clipped and r.threshold == 2.0


# ---------------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------------

MAKERS = {
    "autoclip": lambda m: m.AutoClip(15.0, history_size=11),
    "autoclip-unbounded": lambda m: m.AutoClip(90.0, norm_type=1.0, eps=0.0),
    "zclip": lambda m: m.ZClip(warmup_steps=6, max_grad_norm=None),
    "zclip-defaults": lambda m: m.ZClip(),
    "zclip-percentile": lambda m: m.ZClip(0.9, 2.0, warmup_steps=4, mode="percentile"),
}


@pytest.mark.parametrize("stop", [0, 3, 20, 45])
@pytest.mark.parametrize("name", MAKERS)
def test_state_dict_round_trip_mid_run(impl: Any, name: str, stop: int) -> None:
    """Stop after ``stop`` steps, save through JSON, load into a fresh default clipper:
    the rest of the run is exactly that of the clipper that never stopped."""
    make = MAKERS[name]
    rng = np.random.default_rng(seed_of("state", name))
    run = [step_values(rng, s) for s in norm_scales(seed_of("state", name), 60, SPIKES)]
    straight = make(impl)
    straight_results, straight_arrays = [], []
    for values in run:
        grads = build(values, [np.float32], "C")
        straight_results.append(straight(grads))
        straight_arrays.append([None if g is None else g.tobytes() for g in grads])
    first = make(impl)
    for values in run[:stop]:
        first(build(values, [np.float32], "C"))
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = impl.AutoClip() if name.startswith("autoclip") else impl.ZClip()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    for i, values in enumerate(run[stop:], start=stop):
        grads = build(values, [np.float32], "C")
        assert resumed(grads) == straight_results[i], f"step {i}"
        assert [None if g is None else g.tobytes() for g in grads] == straight_arrays[i]
    assert resumed.state_dict() == straight.state_dict()


@pytest.mark.parametrize("name", MAKERS)
def test_state_dict_loads_across_implementations(name: str) -> None:
    make = MAKERS[name]
    src = make(adaptive)
    rng = np.random.default_rng(5)
    for s in norm_scales(5, 30, SPIKES):
        src(build(step_values(rng, s), [np.float64], "C"))
    twin = ref.AutoClip() if name.startswith("autoclip") else ref.ZClip()
    twin.load_state_dict(src.state_dict())
    assert twin.state_dict() == src.state_dict()
    back = adaptive.AutoClip() if name.startswith("autoclip") else adaptive.ZClip()
    back.load_state_dict(twin.state_dict())
    assert back.state_dict() == src.state_dict()
    # and both continue alike (norm 2.0 is exact in both: the same bits)
    a, b = src(one(2.0)), twin(one(2.0))
    assert a.clipped == b.clipped and a.threshold == b.threshold


def test_state_dict_is_plain(impl: Any) -> None:
    for clipper in (impl.AutoClip(), impl.ZClip(warmup_steps=2)):
        for n in [1.0, 2.0, 3.0]:
            clipper(one(n))
        state = clipper.state_dict()
        assert json.loads(json.dumps(state)) == state
        for value in state.values():
            assert value is None or type(value) in (bool, int, float, str, list)
            if isinstance(value, list):
                assert all(type(v) is float for v in value)
        state["history" if "history" in state else "warmup_norms"].append(123.0)
        assert clipper.state_dict() != state, "state_dict must return a copy"


def good_state(impl: Any, kind: str) -> dict[str, Any]:
    clipper = impl.AutoClip(50.0, 4) if kind == "AutoClip" else impl.ZClip(warmup_steps=3)
    for n in [1.0, 2.0]:
        clipper(one(n))
    state: dict[str, Any] = clipper.state_dict()
    return state


BAD_STATES: list[tuple[str, Callable[[dict[str, Any]], Any], type[Exception]]] = [
    ("AutoClip", lambda d: [d], TypeError),
    ("AutoClip", lambda d: None, TypeError),
    ("AutoClip", lambda d: {k: v for k, v in d.items() if k != "history"}, ValueError),
    ("AutoClip", lambda d: {**d, "extra": 1}, ValueError),
    ("AutoClip", lambda d: {**d, "clipper": "ZClip"}, ValueError),
    ("AutoClip", lambda d: {**d, "version": 99}, ValueError),
    ("AutoClip", lambda d: {**d, "percentile": 0.0}, ValueError),
    ("AutoClip", lambda d: {**d, "percentile": "50"}, TypeError),
    ("AutoClip", lambda d: {**d, "history_size": 1.5}, TypeError),
    ("AutoClip", lambda d: {**d, "history_size": 1}, ValueError),  # shorter than the history
    ("AutoClip", lambda d: {**d, "history": "1, 2"}, TypeError),
    ("AutoClip", lambda d: {**d, "history": [1.0, "2"]}, TypeError),
    ("AutoClip", lambda d: {**d, "history": [1.0, NAN]}, ValueError),
    ("AutoClip", lambda d: {**d, "history": [1.0, -2.0]}, ValueError),
    ("AutoClip", lambda d: {**d, "norm_type": -1.0}, ValueError),
    ("AutoClip", lambda d: {**d, "nonfinite": "ignore"}, ValueError),
    ("AutoClip", lambda d: {**d, "eps": INF}, ValueError),
    ("AutoClip", lambda d: {**d, "per_tensor_norms": None}, TypeError),
    ("ZClip", lambda d: {**d, "clipper": "AutoClip"}, ValueError),
    ("ZClip", lambda d: {k: v for k, v in d.items() if k != "var"}, ValueError),
    ("ZClip", lambda d: {**d, "alpha": 1.0}, ValueError),
    ("ZClip", lambda d: {**d, "z_thresh": None}, TypeError),
    ("ZClip", lambda d: {**d, "warmup_steps": 0}, ValueError),
    ("ZClip", lambda d: {**d, "warmup_steps": True}, TypeError),
    ("ZClip", lambda d: {**d, "warmup_steps": 2}, ValueError),  # two norms: should be done
    ("ZClip", lambda d: {**d, "max_grad_norm": -1.0}, ValueError),
    ("ZClip", lambda d: {**d, "mode": "zscores"}, ValueError),
    ("ZClip", lambda d: {**d, "clip_option": None}, ValueError),
    ("ZClip", lambda d: {**d, "mean": 1.0}, ValueError),  # mean without var
    ("ZClip", lambda d: {**d, "mean": 1.0, "var": 0.1}, ValueError),  # with warm-up norms
    ("ZClip", lambda d: {**d, "mean": "1", "var": 0.1, "warmup_norms": []}, TypeError),
    ("ZClip", lambda d: {**d, "mean": 1.0, "var": NAN, "warmup_norms": []}, ValueError),
    ("ZClip", lambda d: {**d, "mean": 1.0, "var": -0.1, "warmup_norms": []}, ValueError),
    ("ZClip", lambda d: {**d, "warmup_norms": (1.0, INF)}, ValueError),
]


@pytest.mark.parametrize(("kind", "mutate", "exc"), BAD_STATES)
def test_bad_state_dict(impl: Any, kind: str, mutate: Callable[..., Any], exc: type) -> None:
    clipper = getattr(impl, kind)()
    before = clipper.state_dict()
    with pytest.raises(exc):
        clipper.load_state_dict(mutate(good_state(impl, kind)))
    assert clipper.state_dict() == before, "a refused state_dict changed the clipper"


def test_good_state_variants_load(impl: Any) -> None:
    state = good_state(impl, "ZClip")
    state.update(mean=2.0, var=INF, warmup_norms=[])  # an overflowed variance is a state
    clipper = impl.ZClip()
    clipper.load_state_dict(state)
    assert clipper.var == INF and clipper.warmup_steps == 3
    state = good_state(impl, "AutoClip")
    state.update(history=(1, 2.5), history_size=None)  # ints and tuples are fine
    a = impl.AutoClip()
    a.load_state_dict(state)
    assert a.history == (1.0, 2.5) and all(type(v) is float for v in a.history)


# ---------------------------------------------------------------------------------------------
# non-finite norms
# ---------------------------------------------------------------------------------------------


def nonfinite_grads(kind: str) -> list[Any]:
    bad = np.array([1.0, NAN if kind == "nan" else INF, -2.0], np.float32)
    return [np.full(5, 0.5, np.float32), None, bad, np.array([3.0, -4.0])]


def primed(impl: Any, name: str, with_bound: bool) -> Any:
    if name == "autoclip":
        clipper = impl.AutoClip(50.0)
        if not with_bound:
            return clipper
    else:
        clipper = impl.ZClip(warmup_steps=3, max_grad_norm=2.0 if with_bound else None)
    for n in [1.0, 2.0, 3.0, 4.0]:
        clipper(one(n))
    return clipper


@pytest.mark.parametrize("with_bound", [True, False])
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("mode", ["skip", "raise", "zero", "propagate", "default"])
@pytest.mark.parametrize("name", ["autoclip", "zclip"])
def test_nonfinite(impl: Any, name: str, mode: str, kind: str, with_bound: bool) -> None:
    clipper = primed(impl, name, with_bound)
    if mode != "default":
        state = clipper.state_dict()
        clipper.load_state_dict({**state, "nonfinite": mode})
    else:
        assert clipper.nonfinite == "skip", "the stateful clippers skip by default"
    state = clipper.state_dict()
    g = nonfinite_grads(kind)
    before, originals = snapshot(g), copies(g)
    bound = (2.5 if name == "autoclip" else 2.0) if with_bound else INF
    if mode == "raise":
        with pytest.raises(NonFiniteNormError, match="non-finite"):
            clipper(g)
        assert snapshot(g) == before
        assert clipper.state_dict() == state
        return
    r = clipper(g)
    assert clipper.state_dict() == state, "a non-finite norm entered the statistics"
    assert r.found_nonfinite and r.threshold == bound
    assert math.isnan(r.total_norm) if kind == "nan" else r.total_norm == INF
    if mode in ("skip", "default") or (mode == "propagate" and not with_bound):
        assert not r.clipped and r.coef == 1.0
        assert snapshot(g) == before
    elif mode == "zero":
        assert r.clipped and r.coef == 0.0
        for a in g:
            assert a is None or (not np.any(a) and not np.any(np.signbit(a)))
    else:  # propagate with a bound: PyTorch's arithmetic
        assert r.clipped
        for a, o in zip(g, originals, strict=True):
            if a is None:
                continue
            if kind == "nan":
                assert math.isnan(r.coef) and np.all(np.isnan(a))
            else:
                assert r.coef == 0.0
                with np.errstate(invalid="ignore"):
                    assert_same_values(a, o * 0.0)  # finite -> 0 (signed), inf -> NaN
    # the clipper carries on as if the step had not happened
    assert clipper(one(1.5)) == primed(impl, name, with_bound)(one(1.5))


def test_nonfinite_during_autoclip_empty_history(impl: Any) -> None:
    clipper = impl.AutoClip(nonfinite="propagate")
    g = nonfinite_grads("inf")
    before = snapshot(g)
    r = clipper(g)
    assert r.threshold == INF and not r.clipped and snapshot(g) == before
    assert clipper.history == ()


# ---------------------------------------------------------------------------------------------
# bad arguments and bad grads
# ---------------------------------------------------------------------------------------------

BAD_ARGS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("AutoClip", {"percentile": 0.0}, ValueError),
    ("AutoClip", {"percentile": -5.0}, ValueError),
    ("AutoClip", {"percentile": 100.5}, ValueError),
    ("AutoClip", {"percentile": NAN}, ValueError),
    ("AutoClip", {"percentile": "10"}, TypeError),
    ("AutoClip", {"percentile": None}, TypeError),
    ("AutoClip", {"history_size": 0}, ValueError),
    ("AutoClip", {"history_size": 10.0}, TypeError),
    ("AutoClip", {"history_size": True}, TypeError),
    ("AutoClip", {"norm_type": 0.0}, ValueError),
    ("AutoClip", {"norm_type": "2"}, TypeError),
    ("AutoClip", {"nonfinite": "ignore"}, ValueError),
    ("AutoClip", {"eps": -1.0}, ValueError),
    ("AutoClip", {"per_tensor_norms": 1}, TypeError),
    ("ZClip", {"alpha": 0.0}, ValueError),
    ("ZClip", {"alpha": 1.0}, ValueError),
    ("ZClip", {"alpha": "0.9"}, TypeError),
    ("ZClip", {"z_thresh": 0.0}, ValueError),
    ("ZClip", {"z_thresh": INF}, ValueError),
    ("ZClip", {"warmup_steps": 0}, ValueError),
    ("ZClip", {"warmup_steps": 2.0}, TypeError),
    ("ZClip", {"max_grad_norm": 0.0}, ValueError),
    ("ZClip", {"max_grad_norm": INF}, ValueError),
    ("ZClip", {"max_grad_norm": "1"}, TypeError),
    ("ZClip", {"mode": "Zscore"}, ValueError),
    ("ZClip", {"clip_option": "median"}, ValueError),
    ("ZClip", {"norm_type": NAN}, ValueError),
    ("ZClip", {"nonfinite": None}, ValueError),
    ("ZClip", {"eps": NAN}, ValueError),
    ("ZClip", {"per_tensor_norms": "yes"}, TypeError),
]


@pytest.mark.parametrize(("kind", "kwargs", "exc"), BAD_ARGS)
def test_bad_constructor_arguments(impl: Any, kind: str, kwargs: dict[str, Any], exc: type) -> None:
    name = next(iter(kwargs))
    with pytest.raises(exc, match=name):
        getattr(impl, kind)(**kwargs)


def test_positional_arguments(impl: Any) -> None:
    a = impl.AutoClip(25.0, 100, 1.0)
    assert (a.percentile, a.history_size, a.norm_type) == (25.0, 100, 1.0)
    z = impl.ZClip(0.9, 3.0)
    assert (z.alpha, z.z_thresh) == (0.9, 3.0)
    with pytest.raises(TypeError):
        impl.ZClip(0.97, 2.5, 1.0)  # the authors' third positional (max_grad_norm): keyword


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


BAD_GRADS: list[tuple[Callable[[], Any], type[Exception]]] = [
    (lambda: readonly(np.ones(3)), ValueError),
    (lambda: np.arange(3), TypeError),
    (lambda: "grad", TypeError),
    (lambda: [1.0, 2.0], TypeError),
]


@pytest.mark.parametrize(("make_bad", "exc"), BAD_GRADS)
@pytest.mark.parametrize("name", MAKERS)
def test_bad_grads_change_nothing(
    impl: Any, name: str, make_bad: Callable[[], Any], exc: type
) -> None:
    clipper = MAKERS[name](impl)
    for n in [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]:
        clipper(one(n))
    state = clipper.state_dict()
    goods = [np.full(1000, 1.0, np.float32), np.full(10, 3.0)]  # would clip: norm ~32
    before = snapshot(goods)
    with pytest.raises(exc, match=r"grads\[1\]"):
        clipper([goods[0], make_bad(), goods[1]])
    assert snapshot(goods) == before
    assert clipper.state_dict() == state
    with pytest.raises(TypeError):
        clipper(None)
    assert clipper.state_dict() == state


# ---------------------------------------------------------------------------------------------
# input forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
def test_gradient_set_input(name: str) -> None:
    """A GradientSet gives exactly what the plain list gives, step after step."""
    make = MAKERS[name]
    with_list, with_set = make(adaptive), make(adaptive)
    rng = np.random.default_rng(11)
    dtypes = [np.float32, np.float16, np.float64]
    held = build(step_values(rng, 1.0), dtypes, "F")
    gset = gradclip.GradientSet(held)
    for step, scale in enumerate(norm_scales(11, 50, SPIKES)):
        values = step_values(rng, scale)
        plain = build(values, dtypes, "F")
        for a, v in zip(held, plain, strict=True):
            if a is not None:
                a[...] = v
        assert with_set(gset) == with_list(plain), f"step {step}"
        for a, b in zip(held, plain, strict=True):
            assert a is None or a.tobytes() == b.tobytes(), f"step {step}"
    assert with_set.state_dict() == with_list.state_dict()


@pytest.mark.parametrize("kind", ["AutoClip", "ZClip"])
def test_per_tensor_norms(kind: str) -> None:
    """Each array's norm from the same read pass; the rest of the step as without them."""
    kwargs: dict[str, Any] = {"warmup_steps": 4} if kind == "ZClip" else {"percentile": 30.0}
    with_norms = getattr(adaptive, kind)(per_tensor_norms=True, **kwargs)
    twin = getattr(ref, kind)(per_tensor_norms=True, **kwargs)
    plain = getattr(adaptive, kind)(**kwargs)
    rng = np.random.default_rng(21)
    dtypes = [np.float32, np.float16, np.float64]
    held = build(step_values(rng, 1.0), dtypes, "C")
    gset = gradclip.GradientSet(held)
    for step, scale in enumerate(norm_scales(21, 30, SPIKES)):
        values = step_values(rng, scale)
        for a, v in zip(held, values, strict=True):
            if a is not None:
                a[...] = v
        grads, ref_grads, plain_grads = (build(values, dtypes, "C") for _ in range(3))
        originals = copies(grads)
        source: Any = gset if step % 2 else grads
        got, want, base = with_norms(source), twin(ref_grads), plain(plain_grads)
        if source is gset:
            grads = held
        norms = got.tensor_norms
        assert isinstance(norms, np.ndarray) and norms.dtype == np.float64
        assert norms.shape == (len(SHAPES),) and norms[2] == 0.0 and norms[4] == 0.0
        assert want.tensor_norms is not None
        for i, (a, b) in enumerate(zip(norms.tolist(), want.tensor_norms.tolist(), strict=True)):
            assert_norm_close(a, b, 2.0, f"step {step} [{i}]")
        assert_norm_close(got.total_norm, base.total_norm, 2.0, f"step {step} total")
        assert (got.clipped, got.found_nonfinite) == (base.clipped, base.found_nonfinite)
        assert_close(got.threshold, base.threshold, f"step {step} threshold")
        check_step(
            ClipResult(got.total_norm, got.coef, got.clipped, False, None, got.threshold),
            want,
            grads,
            originals,
            ref_grads,
            2.0,
            1e-6,
            f"step {step}",
        )
    one_array = adaptive.AutoClip(per_tensor_norms=True)(np.array([3.0, 4.0]))
    assert one_array.tensor_norms is not None and one_array.tensor_norms.tolist() == [5.0]


def test_gradient_set_nonfinite_zero() -> None:
    g = nonfinite_grads("nan")
    clipper = adaptive.ZClip(nonfinite="zero")
    r = clipper(gradclip.GradientSet(g))
    assert r.found_nonfinite and r.coef == 0.0
    assert all(a is None or not np.any(a) for a in g)


def test_single_array_generator_and_tuple(impl: Any) -> None:
    arrays = [np.full(2, 2.0), np.full(2, 2.0)]
    clipper = impl.AutoClip(50.0)
    clipper([np.full(1, 1.0)])
    r = clipper(a for a in arrays)  # consumed once: the norm and the write see the same arrays
    assert r.total_norm == 4.0 and r.clipped and r.threshold == 2.5
    assert all(np.all(a == 2.0 * (2.5 / (4.0 + 1e-6))) for a in arrays)
    assert clipper((np.full(2, 0.1),)).threshold == 1.0
    assert clipper(np.full(2, 0.1)).total_norm == pytest.approx(math.sqrt(0.02))
    with pytest.warns(UserWarning, match="empty generator"):
        r = clipper(a for a in [])
    assert r.total_norm == 0.0 and not r.clipped


def test_repr_and_properties() -> None:
    a = adaptive.AutoClip(20.0, 5)
    a(one(1.0))
    assert "AutoClip(percentile=20.0, history_size=5" in repr(a) and "1 norms" in repr(a)
    z = adaptive.ZClip()
    assert (z.alpha, z.z_thresh, z.warmup_steps, z.max_grad_norm) == (0.97, 2.5, 25, 1.0)
    assert (z.mode, z.clip_option, z.norm_type, z.eps) == ("zscore", "adaptive_scaling", 2.0, 1e-6)
    assert z.mean is None and z.var is None and not z.initialized
    assert "warm-up 0/25" in repr(z)
