# Exhaustive checks of the float16/bfloat16 paths: every one of the 65,536 bit patterns is
# scaled and clamped on every CPU target and compared bit for bit with NumPy's / ml_dtypes'
# round-to-nearest-even conversions (NaN payloads aside: NaN must stay NaN).
import numpy as np
import pytest

import gradclip
from gradclip._config import _set_cpu_target

ml_dtypes = pytest.importorskip("ml_dtypes", exc_type=ImportError)

DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
COEFS = [0.5, 1.0 / 3.0, 0.999, 1e-3, 2.0**-20, 1e-30, 0.0]


@pytest.fixture(params=gradclip.available_cpu_targets())
def target(request):
    before = gradclip.cpu_target()
    _set_cpu_target(request.param)
    yield request.param
    _set_cpu_target(before)


def all_patterns(dt):
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dt)


def same_bits_or_both_nan(got, exp):
    gb, eb = got.view(np.uint16), exp.view(np.uint16)
    gn = np.isnan(got.astype(np.float32))
    en = np.isnan(exp.astype(np.float32))
    assert np.array_equal(gn, en)
    diff = np.flatnonzero((gb != eb) & ~gn)
    assert diff.size == 0, (got[diff[:5]], exp[diff[:5]])


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("coef", COEFS)
def test_scale_every_pattern(target, dt, coef):
    base = all_patterns(dt)
    got = base.copy()
    if coef > 0:
        gradclip.clip_grads_with_norm_(got, max_norm=coef, total_norm=1.0, eps=0.0)
    else:
        # coefficient 0 through an infinite norm: finite -> 0 (sign kept), inf -> NaN
        gradclip.clip_grads_with_norm_(got, max_norm=1.0, total_norm=np.inf)
    with np.errstate(all="ignore"):
        exp = (base.astype(np.float32) * np.float32(coef)).astype(dt)
    if coef >= 1.0:
        exp = base
    same_bits_or_both_nan(got, exp)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1, 7])
def test_scale_every_pattern_unaligned_strided(target, dt, offset):
    base = all_patterns(dt)[offset:]
    buf = np.zeros(2 * base.size, dtype=dt)
    view = buf[::2]
    view[...] = base
    gradclip.clip_grads_with_norm_(view, max_norm=0.3, total_norm=1.0, eps=0.0)
    with np.errstate(all="ignore"):
        exp = (base.astype(np.float32) * np.float32(0.3)).astype(dt)
    same_bits_or_both_nan(view, exp)
    assert not buf[1::2].view(np.uint16).any()


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("v", [0.0, 1e-6, 0.3, 1.0, 3e4, 1e10])
def test_clamp_every_pattern(target, dt, v):
    base = all_patterns(dt)
    got = base.copy()
    gradclip.clip_grad_value_(got, v)
    with np.errstate(all="ignore"):
        b = np.float32(np.array(v).astype(dt))
        exp = np.clip(base.astype(np.float32), -b, b).astype(dt)
    # compare values (the sign of zero at v == 0 is not specified), NaN stays NaN
    assert np.array_equal(got.astype(np.float32), exp.astype(np.float32), equal_nan=True)
    inside = np.abs(base.astype(np.float32)) <= b
    assert np.array_equal(got.view(np.uint16)[inside], base.view(np.uint16)[inside])


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("p", [1.0, 2.0, np.inf])
def test_norm_of_every_finite_pattern(target, dt, p):
    import math

    base = all_patterns(dt)
    finite = base[np.isfinite(base.astype(np.float32))]
    x = finite.astype(np.float64)
    if p == np.inf:
        exp = float(np.abs(x).max())
    elif p == 1.0:
        exp = math.fsum(np.abs(x).tolist())
    else:
        exp = math.sqrt(math.fsum((x * x).tolist()))
    got = gradclip.get_total_norm(finite, p)
    assert got == pytest.approx(exp, rel=1e-14)
