"""Running a demo task's arms and seeds: worker processes (one BLAS thread each), or this
process, with one progress bar over every run's steps. Nothing here is task-specific."""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = ["default_jobs", "run_all"]

#: train(arm, seed, config, report) -> result
TrainFn = Callable[[str, int, Any, Callable[[int], None]], Any]

_progress_queue: Any = None


def _worker_init(progress: Any) -> None:
    global _progress_queue
    _progress_queue = progress


def _worker_train(train: TrainFn, arm: str, seed: int, config: Any) -> Any:
    def report(steps: int) -> None:
        _progress_queue.put(((arm, seed), steps))

    return train(arm, seed, config, report)


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    # Each worker process runs one small network; BLAS threads on 64x64 matrices only
    # fight the other worker for the cores. Children read these at import time.
    names = (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    )
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_blas_thread() -> AbstractContextManager[object]:
    # the in-process counterpart of _single_threaded_children, when threadpoolctl is there
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(1, user_api="blas")  # type: ignore[no-any-return]


def default_jobs() -> int:
    """The number of CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def run_all(
    train: TrainFn,
    config: Any,
    arms: Sequence[str],
    jobs: int | None = None,
    progress: bool = True,
) -> dict[tuple[str, int], Any]:
    """Run ``train(arm, seed, config, report)`` for every arm and seed ``0 .. config.seeds-1``
    in ``jobs`` worker processes (0: in this process), with one progress bar over all steps.

    ``train`` must be a module-level function (workers import it by name); ``config`` needs
    ``seeds`` and ``steps``; ``report(n)`` is how a run says it did n more steps. Returns the
    results by (arm, seed).
    """
    runs = [(arm, seed) for seed in range(config.seeds) for arm in arms]
    if jobs is None:
        jobs = min(default_jobs(), len(runs))
    bar = _progress_bar(len(runs) * config.steps, progress)
    results: dict[tuple[str, int], Any] = {}
    try:
        if jobs == 0:
            with _one_blas_thread():
                for name, seed in runs:
                    results[name, seed] = _train_in_process(train, name, seed, config, bar)
        else:
            _run_in_workers(train, runs, config, jobs, bar, results)
    finally:
        bar.close()
    return results


def _train_in_process(train: TrainFn, name: str, seed: int, config: Any, bar: Any) -> Any:
    done = 0

    def report(steps: int) -> None:
        nonlocal done
        done += steps
        bar.update(steps)

    result = train(name, seed, config, report)
    bar.update(config.steps - done)  # the rest of a run that stopped early
    return result


def _run_in_workers(
    train: TrainFn,
    runs: list[tuple[str, int]],
    config: Any,
    jobs: int,
    bar: Any,
    results: dict[tuple[str, int], Any],
) -> None:
    # spawn, not fork: the parent may already hold OpenMP and BLAS thread pools, which do
    # not survive a fork
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    reported = dict.fromkeys(runs, 0)

    def drain() -> None:
        while True:
            try:
                key, steps = progress.get_nowait()
            except queue.Empty:
                return
            if key not in results:  # late reports of a finished run are already counted
                reported[key] += steps
                bar.update(steps)

    with (
        _single_threaded_children(),
        ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_worker_init, initargs=(progress,)
        ) as pool,
    ):
        pending: dict[Future[Any], tuple[str, int]] = {
            pool.submit(_worker_train, train, name, seed, config): (name, seed)
            for name, seed in runs
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    key = pending.pop(future)
                    results[key] = future.result()
                    bar.update(config.steps - reported[key])
        except BaseException:
            # Ctrl-C or a failed run: do not start the queued runs while shutting down
            for future in pending:
                future.cancel()
            raise
    progress.close()
    progress.join_thread()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm  # imported here: `import gradclip` must not need tqdm

    return tqdm(total=total, desc="training", unit="step", unit_scale=True, smoothing=0.1)
