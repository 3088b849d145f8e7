"""``python -m gradclip``: the command line (``gradclip demo``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .plot import plot_runs
from .rnn import ARMS, QUICK, DemoConfig, _seeds, format_table, run_demo

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradclip", description="gradclip command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train an RNN on the adding problem with and without gradient clipping",
        description=(
            "Train a vanilla tanh RNN on the adding problem (Pascanu, Mikolov and Bengio, "
            "ICML 2013) with a hand-written backpropagation through time, on the same seeds "
            "under each of: " + "; ".join(arm.title for arm in ARMS) + ". Prints a table "
            "and writes a figure of training loss and gradient norm against step."
        ),
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
        default="gradclip_demo.png",
        help="where to write the figure (PNG; a directory gets gradclip_demo.png)",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m gradclip`` and the ``gradclip`` console script."""
    args = _parser().parse_args(argv)
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
    try:  # fail now rather than after the training
        import matplotlib  # noqa: F401

        if not args.no_progress:
            import tqdm  # noqa: F401
    except ImportError as exc:
        print(
            f"gradclip demo needs matplotlib and tqdm ({exc}): pip install matplotlib tqdm",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out)
    if out.is_dir():
        out = out / "gradclip_demo.png"

    print(
        f"Adding problem (Pascanu, Mikolov & Bengio 2013): tanh RNN, {config.hidden} units, "
        f"sequences of {config.seq_len}, batch {config.batch}, SGD lr {config.lr} momentum "
        f"{config.momentum}, W_hh spectral radius {config.spectral_radius}; "
        f"{config.steps} steps x {_seeds(config.seeds)} per arm",
        flush=True,
    )
    start = time.perf_counter()
    results = run_demo(config, jobs=args.jobs, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    print()
    print(format_table(results, config))
    path = plot_runs(results, config, out)
    print(f"\n{len(results)} runs in {elapsed:.0f} s; figure: {path}")
    return 0
