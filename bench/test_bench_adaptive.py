"""Stateful clippers against a plain global-norm clip, one training step each.

Run: ``python -m pytest bench/test_bench_adaptive.py``. Workloads ``W2-adaptive`` (W2: the
BERT-base gradient list, float32, 110M elements, where the passes over memory dominate) and
``W4-adaptive`` (W4: 100 arrays of 100 floats, where the per-step Python work shows) are W2 and
W4 under their own names, so that their rows, ceilings and "x gradclip" column stay apart from
``test_bench_clip.py``'s. Groups are ``<workload> <case> 1t``; each times one step on the same
arrays:

- ``gradclip`` / ``gradclip-set``: ``clip_grad_norm_`` with a fixed ``max_norm`` (list /
  ``GradientSet``), the baseline;
- ``autoclip`` / ``autoclip-set``: ``AutoClip(percentile=10, history_size=1000)`` with a full
  history (so each step also drops the oldest norm);
- ``zclip`` / ``zclip-set``: ``ZClip()`` past its warm-up;

and the machine's read / read+write ceilings over a flat buffer of the same bytes.

Cases: ``clip`` (the threshold is about a tenth of the norm: one read pass, then one read+write
pass; the arrays are restored before each round, untimed) and ``noclip`` (one read pass). The
clippers are put in the wanted regime by loading a state dict: a history of norms well above
(noclip) or well below (clip) the workload's norm for AutoClip; for ZClip statistics around
the norm (noclip: z = 0) or around a tenth of it (clip: every step is a spike).

What it shows: the per-step cost of the statistics (a few microseconds of Python, W4) next to
the passes over 440 MB that both kinds of step make (W2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import CEILINGS, ceiling_fn, get_workload, record

import gradclip
from gradclip.adaptive import AutoClip, ZClip

WORKLOADS = ["W2", "W4"]
ROUNDS = {"W2": 7, "W4": 300}
PEERS = ["gradclip", "gradclip-set", "autoclip", "autoclip-set", "zclip", "zclip-set"]


def make_clipper(peer: str, case: str, norm: float) -> Any:
    """A clipper whose state makes every step of ``case`` clip (or not) at ``norm``."""
    rng = np.random.default_rng(0)
    if peer.startswith("autoclip"):
        clipper = AutoClip(percentile=10.0, history_size=1000)
        state = clipper.state_dict()
        low, high = (0.05, 0.15) if case == "clip" else (2.0, 20.0)
        state["history"] = (rng.uniform(low, high, 1000) * norm).tolist()
    else:
        clipper = ZClip()
        state = clipper.state_dict()
        mean = norm / 10 if case == "clip" else norm
        state.update(max_grad_norm=None, warmup_norms=[], mean=mean, var=(0.01 * mean) ** 2)
    clipper.load_state_dict(state)
    return clipper


def step_fn(peer: str, case: str, grads: list[np.ndarray], norm: float) -> Any:
    target: Any = gradclip.GradientSet(grads) if peer.endswith("-set") else grads
    if peer.startswith("gradclip"):
        max_norm = norm / 10 if case == "clip" else norm * 10
        if peer == "gradclip-set":
            return lambda: target.clip_norm_(max_norm)
        return lambda: gradclip.clip_grad_norm_(grads, max_norm)
    clipper = make_clipper(peer, case, norm)
    return lambda: clipper(target)


_CHECKED: set[tuple[str, str]] = set()


def check_agreement(w: Any, case: str, norm: float) -> None:
    """Each clipper's step writes exactly what clip_grad_norm_ writes with the clipper's
    threshold as max_norm (nothing at all in the noclip case); checked once per case."""
    if (w.name, case) in _CHECKED:
        return
    for peer in PEERS[2:]:
        w.restore()
        result = step_fn(peer, case, w.grads, norm)()
        assert result.total_norm == norm, peer
        assert result.clipped == (case == "clip"), peer
        assert result.threshold < norm / 5 if case == "clip" else result.threshold > norm, peer
        got = [g.copy() for g in w.grads[:40]] + [w.grads[-1].copy()]
        w.restore()
        if case == "clip":
            assert gradclip.clip_grad_norm_(w.grads, result.threshold) == norm
        for a, b in zip(got, [*w.grads[:40], w.grads[-1]], strict=True):
            assert a.tobytes() == b.tobytes(), peer
    w.restore()
    _CHECKED.add((w.name, case))


def _cases() -> list[Any]:
    # workload outermost: get_workload keeps one workload alive at a time
    cases = []
    for wl in WORKLOADS:
        for peer in CEILINGS:
            cases.append(pytest.param(wl, "-", peer, id=f"{wl}-{peer}"))
        for case in ("clip", "noclip"):
            for peer in PEERS:
                cases.append(pytest.param(wl, case, peer, id=f"{wl}-{case}-{peer}"))
    return cases


@pytest.mark.parametrize(("wl", "case", "peer"), _cases())
def test_step(benchmark: Any, threads_1: int, wl: str, case: str, peer: str) -> None:
    w = get_workload(wl)
    workload, rounds = f"{wl}-adaptive", ROUNDS[wl]
    if peer.startswith("ceiling"):
        benchmark.group = f"{workload} ceiling {threads_1}t"
        fn, nbytes = ceiling_fn(w, peer)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        record(benchmark, workload=workload, case="-", threads=threads_1, peer=peer, nbytes=nbytes)
        return
    w.restore()
    norm = gradclip.get_total_norm(w.grads)
    check_agreement(w, case, norm)
    fn = step_fn(peer, case, w.grads, norm)
    benchmark.group = f"{workload} {case} {threads_1}t"
    setup = w.restore if case == "clip" else None
    benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    w.restore()
    nbytes = 3 * w.nbytes if case == "clip" else w.nbytes
    record(benchmark, workload=workload, case=case, threads=threads_1, peer=peer, nbytes=nbytes)
