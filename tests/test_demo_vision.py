# The demo's vision task (`python -m gradclip demo --task vision`): the digits and their fixed
# split, the hand-written backward pass against float64 central differences (a naive
# convolution, written from the definition, gives the reference loss), what each clipping
# arm does to one gradient, the quick mode's robust claims and the command line end to end.
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import gradclip

pytest.importorskip("sklearn", exc_type=ImportError)

from demo_helpers import one_blas_thread, outputs_in_fresh_processes, run_command_line

from gradclip import demo as demo_package
from gradclip.demo import vision
from gradclip.demo.vision import network, training


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with one_blas_thread():
        yield


def _naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 'same' convolution (cross-correlation) of (N, H, W, C) by an (out, 3, 3, in)
    kernel, one output pixel at a time."""
    n, h, wd, _ = x.shape
    out = np.zeros((n, h, wd, w.shape[0]))
    for i in range(h):
        for j in range(wd):
            for di in range(3):
                for dj in range(3):
                    ii, jj = i + di - 1, j + dj - 1
                    if 0 <= ii < h and 0 <= jj < wd:
                        out[:, i, j] += x[:, ii, jj] @ w[:, di, dj, :].T
    return out + b


def _naive_loss(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    blocks = (len(params) - 4) // 4
    h = _naive_conv(x, params[0], params[1])
    for k in range(blocks):
        w1, b1, w2, b2 = params[2 + 4 * k : 6 + 4 * k]
        branch = _naive_conv(np.maximum(_naive_conv(np.maximum(h, 0), w1, b1), 0), w2, b2)
        h = h + vision.ALPHA * branch
    z = np.maximum(h, 0).mean(axis=(1, 2)) @ params[-2].T + params[-1]
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    return float(-np.mean(log_softmax[np.arange(len(y)), y]))


def _tiny_problem(seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = vision.init_params(rng, width=3, blocks=2, dtype=np.float64)
    # non-zero biases, so that every ReLU sees both signs and every bias gradient is exercised
    for p in params:
        p += 0.2 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 5, 4, 1))
    y = rng.integers(0, 10, 3)
    return params, x, y


def test_digits_split_is_fixed_and_standardised() -> None:
    x_train, y_train, x_test, y_test = vision.load_data()
    assert x_train.shape == (1500, 8, 8, 1) and x_test.shape == (vision.TEST_SIZE, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.intp
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std()) - 1) < 1e-5
    again = vision.load_data()
    assert np.array_equal(again[0], x_train) and np.array_equal(again[3], y_test)
    # train and test are disjoint pieces of the 1,797 images: no test image is in training
    train_rows = {row.tobytes() for row in x_train.reshape(1500, -1)}
    assert sum(row.tobytes() in train_rows for row in x_test.reshape(len(x_test), -1)) < 5


def test_digits_are_scikit_learns_read_without_importing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the demo reads the file load_digits reads, without importing scikit-learn (a second
    # of CPU in the parent and in every worker): the same arrays either way
    from sklearn.datasets import load_digits

    from gradclip.demo.vision import data

    assert data.bundled_digits_file() is not None  # this scikit-learn takes the fast path
    images, labels = load_digits(return_X_y=True)
    direct = data._digits()
    assert direct[0].shape == (1797, 64) and direct[1].dtype == np.intp
    assert np.array_equal(direct[0], images) and np.array_equal(direct[1], labels)
    monkeypatch.setattr(data, "bundled_digits_file", lambda: None)
    data._digits.cache_clear()
    try:
        fallback = data._digits()  # scikit-learn's own loader
    finally:
        data._digits.cache_clear()
    assert np.array_equal(fallback[0], direct[0]) and np.array_equal(fallback[1], direct[1])
    code = (
        "import sys\nfrom gradclip.demo import vision\nx = vision.load_data()[0]\n"
        "assert x.shape == (1500, 8, 8, 1)\nassert 'sklearn' not in sys.modules\nprint('ok')"
    )
    assert outputs_in_fresh_processes(code, [{}]) == ["ok"]


def test_forward_matches_the_naive_network() -> None:
    params, x, y = _tiny_problem(0)
    loss, _ = vision.loss_and_grads(params, x, y)
    assert loss == pytest.approx(_naive_loss(params, x, y), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_backward_matches_central_finite_differences(seed: int) -> None:
    params, x, y = _tiny_problem(seed)
    _, grads = vision.loss_and_grads(params, x, y)
    names = vision.param_names(2, ws=False)
    assert len(names) == len(params) == len(grads) == 12
    step = 1e-6
    for name, p, g in zip(names, params, grads, strict=True):
        assert g.shape == p.shape and g.dtype == np.float64
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + step
            up = _naive_loss(params, x, y)
            p[i] = saved - step
            down = _naive_loss(params, x, y)
            p[i] = saved
            numeric[i] = (up - down) / (2 * step)
        assert np.linalg.norm(numeric) > 0, name
        rel = np.linalg.norm(g - numeric) / np.linalg.norm(numeric)
        assert rel < 1e-6, f"{name}: relative error {rel:.2e}"


def test_large_batches_in_chunks_give_the_whole_batch_gradient() -> None:
    rng = np.random.default_rng(3)
    params = vision.init_params(rng, width=4, blocks=1, dtype=np.float64)
    x = rng.standard_normal((network._CHUNK * 2 + 5, 8, 8, 1))
    y = rng.integers(0, 10, len(x))
    loss, grads = vision.loss_and_grads(params, x, y)
    parts = [slice(0, network._CHUNK + 3), slice(network._CHUNK + 3, len(x))]
    convs = network._layers(params)[0]
    pieces = [network._loss_and_grads(params, x[s], y[s], len(x), convs) for s in parts]
    assert loss == pytest.approx(sum(p[0] for p in pieces), rel=1e-12)
    for g, a, b in zip(grads, pieces[0][1], pieces[1][1], strict=True):
        np.testing.assert_allclose(g, a + b, rtol=1e-10, atol=1e-14)


def test_every_arm_starts_from_the_same_network_and_data() -> None:
    config = replace(vision.QUICK, steps=2, eval_every=1)
    runs = [vision.train(arm, 0, config) for arm in vision.ARMS]
    assert len({r.loss[0] for r in runs}) == 1
    assert vision.train("global", 1, config).loss[0] != runs[0].loss[0]


def _huge_grads(params: list[np.ndarray]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(1e3 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def test_agc_arm_clips_each_unit_but_not_the_final_layer() -> None:
    config = vision.VisionConfig()
    params = vision.init_params(np.random.default_rng(0), config.width, config.blocks)
    params[1][:] = 0.5  # one bias away from zero: its unit bound follows its norm
    grads = _huge_grads(params)
    before = [g.copy() for g in grads]
    clip = training._ARM_BY_NAME["agc"].make(config, params)
    norm, fired = clip(grads)
    assert fired and norm == pytest.approx(gradclip.get_total_norm(before))
    for g, w in zip(grads[:-2], params[:-2], strict=True):
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        if g.ndim == 1:  # a bias vector: one unit
            unit_g, unit_w = np.linalg.norm(g64), np.linalg.norm(w64)
            bound = config.clipping * max(unit_w, config.agc_eps)
            assert unit_g == pytest.approx(bound, rel=1e-5)
        else:  # one unit per output channel
            unit_g = np.linalg.norm(g64.reshape(len(g), -1), axis=1)
            unit_w = np.linalg.norm(w64.reshape(len(w), -1), axis=1)
            bound = config.clipping * np.maximum(unit_w, config.agc_eps)
            np.testing.assert_allclose(unit_g, bound, rtol=1e-5)
    # the final linear layer (weight and bias) is left alone, as in the NFNet paper
    assert np.array_equal(grads[-2], before[-2]) and np.array_equal(grads[-1], before[-1])
    # a gradient far below every bound is not touched
    small = [1e-9 * g for g in before]
    kept = [g.copy() for g in small]
    assert not clip(small)[1]
    assert all(np.array_equal(a, b) for a, b in zip(small, kept, strict=True))


@pytest.mark.parametrize("name", ["global", "per-tensor", "value"])
def test_fixed_threshold_arms_bound_the_update_by_max_norm(name: str) -> None:
    config = vision.VisionConfig(max_norm=0.7)
    params = vision.init_params(np.random.default_rng(0), config.width, config.blocks)
    grads = _huge_grads(params)
    before = gradclip.get_total_norm(grads)
    norm, fired = training._ARM_BY_NAME[name].make(config, params)(grads)
    assert norm == pytest.approx(before) and fired
    assert gradclip.get_total_norm(grads) <= config.max_norm * (1 + 1e-5)


# Quick mode: 45 steps at the default learning rate, the first 45 steps of the default runs.
# The arithmetic is the same bits on every machine (the test at the end of this file), so
# what the quick runs do is a fact, not a chance: the unclipped run blows up on both seeds
# (at steps 39 and 17), and every clipped arm keeps every value finite. The mechanism is
# checked too: the fixed-threshold arms hand the update a gradient of norm <= max_norm at
# every step, and AGC clips every step.


@pytest.mark.parametrize("seed", range(vision.QUICK.seeds))
@pytest.mark.parametrize("arm", ["none", "global", "agc", "per-tensor", "value"])
def test_quick_mode_runs(arm: str, seed: int) -> None:
    run = vision.train(arm, seed, vision.QUICK)
    steps = run.steps_run
    assert len(run.eval_steps) == len(run.eval_accuracy) and run.eval_steps[-1] == steps
    if arm == "none":
        assert run.clipped == 0 and run.diverged and run.stopped
        np.testing.assert_array_equal(run.clipped_norm[:steps], run.grad_norm[:steps])
        return
    assert run.clipped > 0 and not run.diverged
    fired = run.clipped_norm[:steps] < run.grad_norm[:steps]
    assert int(fired.sum()) == run.clipped  # a step counted as clipped shrank the gradient
    if arm == "agc":
        assert run.clipped == steps
    else:
        assert np.all(run.clipped_norm[:steps] <= vision.QUICK.max_norm * (1 + 1e-5))
    assert steps == vision.QUICK.steps and not run.stopped
    assert np.all(np.isfinite(run.loss)) and np.all(np.isfinite(run.grad_norm))
    assert math.isfinite(run.test_loss)


def test_run_demo_in_process_covers_every_arm_and_seed() -> None:
    config = replace(vision.QUICK, steps=4, eval_every=2)
    results = vision.run_demo(config, jobs=0, progress=False)
    assert [(r.arm, r.seed) for r in results] == [
        (arm.name, seed) for arm in vision.ARMS for seed in (0, 1)
    ]
    table = vision.format_table(results, config)
    for arm in vision.ARMS:
        assert f"| {arm.name} " in table and f"\n{arm.name}: " in table
    assert "| 0.01 |w| per unit " in table


def test_command_line_vision_and_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out = run_command_line(["--task", "all", "--quick", "--steps", "10"], out_dir, capsys)
    names = ["demo.png", "demo_output.txt", "demo_vision.png", "demo_vision_output.txt"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)
    assert out.index("Adding problem") < out.index("Handwritten digits")
    written = (out_dir / "demo_vision_output.txt").read_text(encoding="utf-8")
    assert written.startswith("Handwritten digits (scikit-learn load_digits")
    assert "10 steps x 2 seeds per arm" in written
    rows = [line for line in written.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["arm"] + [a.name for a in vision.ARMS]


def test_accuracy_panel_keeps_the_runs_that_stopped_in_view(tmp_path: Path) -> None:
    # a run that stopped on a non-finite value is scored 0% at its last evaluation: its
    # curve ends in a cross there, and the median over seeds stops once most seeds stopped
    pytest.importorskip("matplotlib", exc_type=ImportError)
    from matplotlib.figure import Figure

    from gradclip.demo import plot

    def run(seed: int, eval_steps: list[int], accuracy: list[float]) -> vision.VisionResult:
        steps = eval_steps[-1]
        stopped = steps < 45
        loss = np.full(45, np.nan)
        loss[:steps] = 2.0
        return vision.VisionResult(
            arm="none",
            seed=seed,
            loss=loss,
            grad_norm=loss.copy(),
            steps_run=steps,
            clipped=0,
            diverged_at=steps - 2 if stopped else None,
            stopped=stopped,
            seconds=0.0,
            test_accuracy=accuracy[-1],
            test_loss=math.nan if stopped else 1.0,
            clipped_norm=loss.copy(),
            eval_steps=np.array(eval_steps, dtype=np.intp),
            eval_accuracy=np.array(accuracy),
        )

    runs = [run(0, [15, 19], [0.12, 0.0]), run(1, [15, 30, 41], [0.1, 0.3, 0.0])]
    runs.append(run(2, [15, 30, 45], [0.2, 0.4, 0.6]))
    ax = Figure().subplots()
    seen = {"o": False, "x": False}
    plot._accuracy_curves(ax, runs, "red", "-", {"color": "red"}, seen)
    assert seen["x"]
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert [(list(c.get_xdata()), list(c.get_ydata())) for c in crosses] == [
        ([19], [0.0]),
        ([41], [0.0]),
    ]
    median = ax.lines[-1]
    assert list(median.get_xdata()) == [15, 30, 45]
    np.testing.assert_allclose(median.get_ydata(), [12.0, 30.0, np.nan])
    config = replace(vision.QUICK, seeds=3)
    path = vision.save_figure(runs, config, tmp_path / "f.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_options_of_the_other_task_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo_package.main(["demo", "--task", "vision", "--seq-len", "10"]) == 2
    assert "--seq-len applies to --task rnn only" in capsys.readouterr().err
    assert demo_package.main(["demo", "--width", "8"]) == 2  # the default task is the RNN
    assert "--width applies to --task vision only" in capsys.readouterr().err
    assert demo_package.main(["demo", "--task", "vision", "--batch", "5000"]) == 2
    assert "batch must be at most 1500" in capsys.readouterr().err


def test_weight_standardisation_backward_matches_central_finite_differences() -> None:
    # L = sum(G * W_hat(W, gain)) for a fixed G: its gradient is what standardise_backward
    # returns for the incoming gradient G; float64 throughout
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 3, 2))
    gain = 1 + 0.3 * rng.standard_normal(4)
    g_hat = rng.standard_normal(w.shape)

    def loss(w_: np.ndarray, gain_: np.ndarray) -> float:
        return float(np.sum(g_hat * vision.standardise(w_, gain_)[0]))

    w_hat, saved = vision.standardise(w, gain)
    # each output channel of W_hat has mean 0 and norm gain * RELU_GAIN
    flat = w_hat.reshape(4, -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), np.abs(gain) * vision.RELU_GAIN)
    d_w, d_gain = vision.standardise_backward(g_hat, saved)
    step = 1e-6
    numeric_w = np.empty_like(w)
    for i in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[i] += step
        down[i] -= step
        numeric_w[i] = (loss(up, gain) - loss(down, gain)) / (2 * step)
    numeric_gain = np.empty_like(gain)
    for i in range(len(gain)):
        up, down = gain.copy(), gain.copy()
        up[i] += step
        down[i] -= step
        numeric_gain[i] = (loss(w, up) - loss(w, down)) / (2 * step)
    np.testing.assert_allclose(d_w, numeric_w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d_gain, numeric_gain, rtol=1e-6, atol=1e-8)


def test_backward_with_weight_standardisation_matches_finite_differences() -> None:
    # the whole network with scaled weight standardisation, float64: loss_and_grads' own
    # forward pass gives the reference loss (the naive network above has no standardisation)
    rng = np.random.default_rng(2)
    params = vision.init_params(rng, width=3, blocks=1, dtype=np.float64, ws=True)
    for p in params:
        p += 0.2 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 5, 4, 1))
    y = rng.integers(0, 10, 3)
    _, grads = vision.loss_and_grads(params, x, y)
    names = vision.param_names(1, ws=True)
    assert len(names) == len(params) == len(grads) == 11
    step = 1e-6
    for name, p, g in zip(names, params, grads, strict=True):
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + step
            up = vision.loss_and_grads(params, x, y)[0]
            p[i] = saved - step
            down = vision.loss_and_grads(params, x, y)[0]
            p[i] = saved
            numeric[i] = (up - down) / (2 * step)
        rel = np.linalg.norm(g - numeric) / np.linalg.norm(numeric)
        assert rel < 1e-6, f"{name}: relative error {rel:.2e}"


_DIGEST = """
import hashlib, json
import gradclip
from dataclasses import replace
from threadpoolctl import threadpool_info
from gradclip.demo import vision
config = replace(vision.QUICK, steps=12, seeds=1, width=4, batch=64, eval_every=6)
digest = hashlib.sha256()
for arm in ("none", "global", "agc"):
    r = vision.train(arm, 0, config)
    digest.update(r.loss.tobytes() + r.grad_norm.tobytes() + r.eval_accuracy.tobytes())
blas = [i.get("architecture") for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([digest.hexdigest(), blas, gradclip.cpu_target()]))
"""


def test_training_is_the_same_bits_under_other_blas_kernels_and_cpu_targets() -> None:
    # the property behind the demo's claims: the run's arithmetic does not depend on the BLAS
    # kernel (OpenBLAS's SkylakeX, Haswell, Sandybridge and SSE-only kernels round float32
    # products differently), its thread count, NumPy's SIMD paths or gradclip's CPU target,
    # so a run gives the same bits on every machine
    pytest.importorskip("threadpoolctl", exc_type=ImportError)
    import json

    targets = gradclip.available_cpu_targets()
    settings = [
        {"OPENBLAS_NUM_THREADS": "1", "GRADCLIP_CPU_TARGET": targets[-1]},
        {
            "OPENBLAS_CORETYPE": "Sandybridge",
            "OPENBLAS_NUM_THREADS": "2",
            "NPY_DISABLE_CPU_FEATURES": "AVX512_ICL,X86_V4,X86_V3",
            "GRADCLIP_CPU_TARGET": targets[0],
        },
    ]
    seen = [json.loads(line) for line in outputs_in_fresh_processes(_DIGEST, settings)]
    assert seen[0][0] == seen[1][0]
    if len(targets) > 1:  # the settings took effect: another gradclip target ran
        assert seen[0][2] != seen[1][2]
