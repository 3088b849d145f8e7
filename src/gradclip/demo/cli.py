"""``gradclip demo``: the demo's command-line options and its run (``gradclip._cli`` lists
the commands and dispatches to :func:`run`). ``--task`` picks the task: ``rnn`` (the default),
``vision`` or ``all``; each task module provides ``run_demo``, ``format_table``, ``save_figure`` and
``header``, and :data:`TASKS` says what else the command line needs to know about it."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from . import rnn, vision

__all__ = [
    "DEFAULT_OUT",
    "FIGURE",
    "HELP",
    "INSTALL",
    "REPORT",
    "TASKS",
    "Task",
    "add_arguments",
    "run",
]

HELP = (
    "train an RNN on the adding problem, or a residual CNN without normalisation on "
    "handwritten digits, with and without gradient clipping"
)
#: where the outputs go without --out: a directory of their own, which .gitignore and the
#: sdist configuration exclude, so a run in a checkout never ends up in a commit or an sdist
DEFAULT_OUT = "gradclip-demo-output"
#: what installs the packages the demo needs beyond gradclip's own (the ``demo`` extra)
INSTALL = 'pip install "gradclip[demo]"'


@dataclass(frozen=True)
class Task:
    """One task of the demo, as the command line sees it."""

    name: str
    module: ModuleType
    quick: Any
    #: the files a run writes into its output directory (``--out docs`` refreshes the README's)
    figure: str
    report: str
    #: packages the task needs beyond matplotlib and tqdm: (import name, distribution name);
    #: looked for, not imported (the vision task reads only a data file scikit-learn bundles,
    #: and importing scikit-learn would cost a second before the training starts)
    packages: tuple[tuple[str, str], ...] = ()

    def default(self) -> Any:
        return type(self.quick)()


TASKS = {
    "rnn": Task("rnn", rnn, rnn.QUICK, "demo.png", "demo_output.txt"),
    "vision": Task(
        "vision",
        vision,
        vision.QUICK,
        "demo_vision.png",
        "demo_vision_output.txt",
        (("sklearn", "scikit-learn"),),
    ),
}
#: the RNN task's files (the default task)
FIGURE = TASKS["rnn"].figure
REPORT = TASKS["rnn"].report
#: command-line option (dest) -> the config field it sets, in every task that has it
_OPTIONS = ("steps", "seeds", "seq_len", "hidden", "width", "blocks", "batch", "lr", "max_norm")


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """The demo's options, on its subparser."""
    demo.description = (
        "Train, on the same seeds under each of several clipping rules, either a vanilla "
        "tanh RNN on the adding problem (Pascanu, Mikolov and Bengio, ICML 2013) with a "
        "hand-written backpropagation through time (--task rnn, the default: "
        + "; ".join(arm.title for arm in rnn.ARMS)
        + "), or a residual CNN without normalisation layers on scikit-learn's bundled "
        "8x8 handwritten digits (Brock et al., ICML 2021) with a hand-written backward pass "
        "(--task vision: " + "; ".join(arm.title for arm in vision.ARMS) + "). Prints a "
        "table and writes it with a figure of training loss and gradient norm against step "
        f"to the output directory ({FIGURE} and {REPORT} for the RNN, "
        f"{TASKS['vision'].figure} and {TASKS['vision'].report} for the CNN). Needs "
        f"matplotlib and tqdm, and scikit-learn for the CNN: {INSTALL}."
    )
    d, v = rnn.DemoConfig(), vision.VisionConfig()
    demo.add_argument(
        "--task",
        choices=(*TASKS, "all"),
        default="rnn",
        help="rnn: the adding problem (default); vision: the digits; all: both, one after "
        "the other",
    )
    demo.add_argument(
        "--steps", type=int, help=f"training steps per run (default {d.steps}; vision {v.steps})"
    )
    demo.add_argument(
        "--seeds", type=int, help=f"seeds 0..N-1 per arm (default {d.seeds}; vision {v.seeds})"
    )
    demo.add_argument("--seq-len", type=int, help=f"rnn: sequence length (default {d.seq_len})")
    demo.add_argument("--hidden", type=int, help=f"rnn: hidden units (default {d.hidden})")
    demo.add_argument("--width", type=int, help=f"vision: channels (default {v.width})")
    demo.add_argument("--blocks", type=int, help=f"vision: residual blocks (default {v.blocks})")
    demo.add_argument(
        "--batch",
        type=int,
        help=f"sequences or images per step (default {d.batch}; vision {v.batch})",
    )
    demo.add_argument("--lr", type=float, help=f"learning rate (default {d.lr}; vision {v.lr})")
    demo.add_argument(
        "--max-norm",
        type=float,
        help=f"clipping threshold, total norm (default {d.max_norm}; vision {v.max_norm})",
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"directory for the figures and tables, made if missing (default: ./{DEFAULT_OUT})",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: rnn {rnn.QUICK.steps} steps, {rnn.QUICK.seeds} seeds; vision "
        f"{vision.QUICK.steps} steps, {vision.QUICK.seeds} seeds (other options override)",
    )
    demo.add_argument(
        "--jobs", type=int, help="worker processes (default: available cores; 0: in-process)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")


def _missing_packages(progress: bool, tasks: list[Task]) -> str | None:
    """Why the demo cannot run here (matplotlib, tqdm or a task's package missing), or None."""
    wanted = [("matplotlib", "matplotlib")]
    if progress:
        wanted.append(("tqdm", "tqdm"))
    missing = []
    for module, dist in wanted:
        try:
            __import__(module)
        except ImportError as exc:  # absent, or present but broken: then say why
            missing.append(dist if exc.name == module else f"{dist} ({exc})")
    for task in tasks:
        missing += [
            dist
            for module, dist in task.packages
            if dist not in missing and importlib.util.find_spec(module) is None
        ]
    if not missing:
        return None
    return (
        f"gradclip demo needs {' and '.join(missing)}, which gradclip does not install by "
        f"default.\nInstall the demo's dependencies with:\n    {INSTALL}\n"
        '(from a source checkout: pip install ".[demo]")'
    )


def _configs(args: argparse.Namespace, tasks: list[Task]) -> list[Any]:
    """Each task's settings: its defaults (or quick ones) with the options given; ValueError
    for an option that no chosen task has, or a setting out of range."""
    configs = []
    given = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name) is not None}
    used: set[str] = set()
    for task in tasks:
        config = task.quick if args.quick else task.default()
        names = {f.name for f in fields(config)}
        overrides = {k: v for k, v in given.items() if k in names}
        used |= overrides.keys()
        config = replace(config, **overrides)
        config.check()
        configs.append(config)
    unused = sorted(set(given) - used)
    if unused:
        option = "--" + unused[0].replace("_", "-")
        owner = [t.name for t in TASKS.values() if unused[0] in {f.name for f in fields(t.quick)}]
        raise ValueError(f"{option} applies to --task {' or '.join(owner)} only")
    return configs


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; the exit status (2: bad options, 1: missing
    packages)."""
    tasks = list(TASKS.values()) if args.task == "all" else [TASKS[args.task]]
    try:
        configs = _configs(args, tasks)
    except ValueError as exc:
        print(f"gradclip demo: {exc}", file=sys.stderr)
        return 2
    # fail now rather than after the training
    problem = _missing_packages(progress=not args.no_progress, tasks=tasks)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, or no permission
        print(f"gradclip demo: --out {args.out} is not a usable directory ({exc})", file=sys.stderr)
        return 2
    for i, (task, config) in enumerate(zip(tasks, configs, strict=True)):
        if i:
            print()
        _run_task(task, config, out, args)
    return 0


def _run_task(task: Task, config: Any, out: Path, args: argparse.Namespace) -> None:
    module = task.module
    header = module.header(config)
    print(header, flush=True)
    start = time.perf_counter()
    results = module.run_demo(config, jobs=args.jobs, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    table = module.format_table(results, config)
    figure = module.save_figure(results, config, out / task.figure)
    summary = f"{len(results)} runs in {elapsed:.0f} s; figure: {figure}"
    report = out / task.report
    report.write_text(f"{header}\n\n{table}\n\n{summary}\n", encoding="utf-8")
    print()
    print(table)
    print(f"\n{summary}; table: {report}")
