"""Running a demo task's arms and seeds: worker processes (one BLAS thread each), or this
process, with one progress bar over every run's steps. Nothing here is task-specific.

A task's training function takes a group of (arm, seed) runs and returns their results in
order: the RNN task trains a group side by side as one stack of networks (the Python work of
its recurrence is shared); a task that does not, trains them one after the other. Each
worker process gets one group, as even in size as the runs allow, or, with
``group_size=1``, one run at a time (better balanced when runs are long and unstacked)."""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = ["WORKER_MALLOC", "WORKER_THREADS", "default_jobs", "run_all"]

#: train(runs, config, report) -> one result per (arm, seed) run, in order; report(n) says
#: that n more run-steps are done
TrainFn = Callable[[list[tuple[str, int]], Any, Callable[[int], None]], list[Any]]

_progress_queue: Any = None

#: BLAS and OpenMP threads of each worker process. The demo's results do not depend on it
#: (its products are exact, and gradclip's norms the same bits on any thread count); the
#: sweep in the project's ``tools/demo_sweep.py`` sets it to show that they do not.
WORKER_THREADS = 1


def _worker_init(progress: Any) -> None:
    global _progress_queue
    _progress_queue = progress


def _worker_train(train: TrainFn, group: list[tuple[str, int]], config: Any) -> list[Any]:
    def report(steps: int) -> None:
        _progress_queue.put((group[0], steps))

    return train(group, config, report)


#: glibc's malloc settings for the worker processes, unless the caller set them. By default
#: it hands memory freed at the top of the heap back to the kernel and maps large blocks
#: afresh, so the few-hundred-kilobyte temporaries every training step allocates and frees
#: (im2col buffers, activations, gradients) were faulted in again page by page, step after
#: step: a third of a worker's CPU time in system calls and page faults (400,000 page faults
#: in two 45-step vision runs; 1.8 times the CPU time of the same runs with these settings,
#: 1.5 times for the RNN, measured on an AMD EPYC Zen 4). Blocks below 16 MiB come from the
#: heap, and up to 64 MiB of free memory stays with the process. Other C libraries ignore
#: them; the arithmetic does not depend on them.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(16 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    # Each worker process runs one small network; BLAS threads on 64x64 matrices only
    # fight the other worker for the cores. Children read these at start-up and import.
    names = (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    )
    saved = {name: os.environ.get(name) for name in (*names, *WORKER_MALLOC)}
    os.environ.update(dict.fromkeys(names, str(WORKER_THREADS)))
    os.environ.update({k: v for k, v in WORKER_MALLOC.items() if saved[k] is None})
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
    return threadpool_limits(WORKER_THREADS, user_api="blas")  # type: ignore[no-any-return]


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
    group_size: int | None = None,
) -> dict[tuple[str, int], Any]:
    """Run every arm and seed ``0 .. config.seeds-1`` through ``train(group, config,
    report)`` in ``jobs`` worker processes (0: in this process), with one progress bar over
    all steps.

    ``train`` must be a module-level function (workers import it by name); ``config`` needs
    ``seeds`` and ``steps``. The runs are split into one group per worker (all in one group
    in this process), or into groups of ``group_size``. Returns the results by (arm, seed).
    """
    runs = [(arm, seed) for seed in range(config.seeds) for arm in arms]
    if jobs is None:
        jobs = min(default_jobs(), len(runs))
    if group_size is None:
        count = max(1, jobs)
        groups = [runs[i::count] for i in range(count) if runs[i::count]]
    else:
        groups = [runs[i : i + group_size] for i in range(0, len(runs), group_size)]
    bar = _progress_bar(len(runs) * config.steps, progress)
    results: dict[tuple[str, int], Any] = {}
    try:
        if jobs == 0:
            with _one_blas_thread():
                for group in groups:
                    _train_in_process(train, group, config, bar, results)
        else:
            _run_in_workers(train, groups, config, jobs, bar, results)
    finally:
        bar.close()
    return results


def _train_in_process(
    train: TrainFn,
    group: list[tuple[str, int]],
    config: Any,
    bar: Any,
    results: dict[tuple[str, int], Any],
) -> None:
    done = 0

    def report(steps: int) -> None:
        nonlocal done
        done += steps
        bar.update(steps)

    for key, result in zip(group, train(group, config, report), strict=True):
        results[key] = result
    bar.update(len(group) * config.steps - done)  # the rest of runs that stopped early


def _run_in_workers(
    train: TrainFn,
    groups: list[list[tuple[str, int]]],
    config: Any,
    jobs: int,
    bar: Any,
    results: dict[tuple[str, int], Any],
) -> None:
    # spawn, not fork: the parent may already hold OpenMP and BLAS thread pools, which do
    # not survive a fork
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    reported = {group[0]: 0 for group in groups}
    finished: set[tuple[str, int]] = set()

    def drain() -> None:
        while True:
            try:
                key, steps = progress.get_nowait()
            except queue.Empty:
                return
            if key not in finished:  # late reports of a finished group are already counted
                reported[key] += steps
                bar.update(steps)

    with (
        _single_threaded_children(),
        ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_worker_init, initargs=(progress,)
        ) as pool,
    ):
        pending: dict[Future[Any], list[tuple[str, int]]] = {
            pool.submit(_worker_train, train, group, config): group for group in groups
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    group = pending.pop(future)
                    for key, result in zip(group, future.result(), strict=True):
                        results[key] = result
                    finished.add(group[0])
                    bar.update(len(group) * config.steps - reported[group[0]])
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
