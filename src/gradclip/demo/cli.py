"""``gradclip demo``: the demo's command-line options and its run (``gradclip._cli`` lists
the commands and dispatches to :func:`run`)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from .plot import plot_runs
from .rnn import ARMS, QUICK, DemoConfig, _seeds, format_table, run_demo

__all__ = ["DEFAULT_OUT", "FIGURE", "HELP", "INSTALL", "REPORT", "add_arguments", "run"]

HELP = "train an RNN on the adding problem with and without gradient clipping"
#: where the outputs go without --out: a directory of their own, which .gitignore and the
#: sdist configuration exclude, so a run in a checkout never ends up in a commit or an sdist
DEFAULT_OUT = "gradclip-demo-output"
#: the files a run writes into its output directory (``--out docs`` refreshes the README's)
FIGURE = "demo.png"
REPORT = "demo_output.txt"
#: what installs the packages the demo needs beyond gradclip's own (the ``demo`` extra)
INSTALL = 'pip install "gradclip[demo]"'


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """The demo's options, on its subparser."""
    demo.description = (
        "Train a vanilla tanh RNN on the adding problem (Pascanu, Mikolov and Bengio, "
        "ICML 2013) with a hand-written backpropagation through time, on the same seeds "
        "under each of: " + "; ".join(arm.title for arm in ARMS) + ". Prints a table and "
        f"writes it ({REPORT}) with a figure of training loss and gradient norm against step "
        f"({FIGURE}) to the output directory. Needs matplotlib and tqdm: {INSTALL}."
    )
    d = DemoConfig()
    demo.add_argument("--steps", type=int, help=f"training steps per run (default {d.steps})")
    demo.add_argument("--seeds", type=int, help=f"seeds 0..N-1 per arm (default {d.seeds})")
    demo.add_argument("--seq-len", type=int, help=f"sequence length (default {d.seq_len})")
    demo.add_argument("--hidden", type=int, help=f"hidden units (default {d.hidden})")
    demo.add_argument("--batch", type=int, help=f"sequences per step (default {d.batch})")
    demo.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    demo.add_argument(
        "--max-norm", type=float, help=f"clipping threshold, total norm (default {d.max_norm})"
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"directory for {FIGURE} and {REPORT}, made if missing (default: ./{DEFAULT_OUT})",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK.steps} steps, {QUICK.seeds} seeds (other options override)",
    )
    demo.add_argument(
        "--jobs", type=int, help="worker processes (default: available cores; 0: in-process)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")


def _missing_packages(progress: bool) -> str | None:
    """Why the demo cannot run here (matplotlib or tqdm missing), or None."""
    missing = []
    for name in ("matplotlib", "tqdm") if progress else ("matplotlib",):
        try:
            __import__(name)
        except ImportError as exc:  # absent, or present but broken: then say why
            missing.append(name if exc.name == name else f"{name} ({exc})")
    if not missing:
        return None
    return (
        f"gradclip demo needs {' and '.join(missing)}, which gradclip does not install by "
        f"default.\nInstall the demo's dependencies with:\n    {INSTALL}\n"
        '(from a source checkout: pip install ".[demo]")'
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; the exit status (2: bad options, 1: missing
    packages)."""
    config = QUICK if args.quick else DemoConfig()
    overrides = {
        name: getattr(args, name)
        for name in ("steps", "seeds", "seq_len", "hidden", "batch", "lr", "max_norm")
        if getattr(args, name) is not None
    }
    config = replace(config, **overrides)
    try:
        config.check()
    except ValueError as exc:
        print(f"gradclip demo: {exc}", file=sys.stderr)
        return 2
    # fail now rather than after the training
    problem = _missing_packages(progress=not args.no_progress)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, or no permission
        print(f"gradclip demo: --out {args.out} is not a usable directory ({exc})", file=sys.stderr)
        return 2

    header = (
        f"Adding problem (Pascanu, Mikolov & Bengio 2013): tanh RNN, {config.hidden} units, "
        f"sequences of {config.seq_len}, batch {config.batch}, SGD lr {config.lr} momentum "
        f"{config.momentum}, W_hh spectral radius {config.spectral_radius}; "
        f"{config.steps} steps x {_seeds(config.seeds)} per arm"
    )
    print(header, flush=True)
    start = time.perf_counter()
    results = run_demo(config, jobs=args.jobs, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    table = format_table(results, config)
    figure = plot_runs(results, config, out / FIGURE)
    summary = f"{len(results)} runs in {elapsed:.0f} s; figure: {figure}"
    report = out / REPORT
    report.write_text(f"{header}\n\n{table}\n\n{summary}\n", encoding="utf-8")
    print()
    print(table)
    print(f"\n{summary}; table: {report}")
    return 0
