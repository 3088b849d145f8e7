"""Run ``python -m gradclip demo`` (both tasks, default settings) under several BLAS kernels,
NumPy SIMD paths, gradclip CPU targets and thread counts, and write what each gave as a
Markdown page (the project's ``docs/demo-sweep.md``).

Each setting runs in a fresh process with its environment variables set (OpenBLAS, NumPy and
gradclip read them at import) and prints, per task, a SHA-256 digest of every run's per-step
training loss and gradient norm and its test metrics, the expectation check the demo prints,
and the wall time. The demo keeps its word on any machine when every setting gives the same
digest (the same bits, so the same table) and every check says "as expected".

    python tools/demo_sweep.py                   # writes docs/demo-sweep.md
    python tools/demo_sweep.py --quick --out -   # a smoke run, to stdout

It takes a few minutes per setting on two cores; run it at low priority on a shared machine
(``nice -n 10``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: NumPy's dispatch targets to disable for its AVX2 and baseline (SSE4.2) paths
NUMPY_AVX2 = "AVX512_ICL,AVX512_SPR,X86_V4"
NUMPY_BASELINE = NUMPY_AVX2 + ",X86_V3"

#: (OPENBLAS_CORETYPE or "" for OpenBLAS's own choice, NPY_DISABLE_CPU_FEATURES,
#: GRADCLIP_CPU_TARGET or "" for the best, threads per worker); the factors vary together,
#: so that a few settings cover every kernel, path, target and thread count
SETTINGS = (
    ("", "", "", 1),
    ("Sandybridge", NUMPY_BASELINE, "baseline", 1),
    ("Prescott", NUMPY_AVX2, "avx512", 1),
    ("Haswell", NUMPY_AVX2, "avx2", 2),
)
#: Kernel names OpenBLAS may run another kernel for (0.3.31, NumPy 2.4's, runs Haswell for
#: Zen and SkylakeX for Cooperlake): the page says which kernel each one ran
ALIASES = ("Zen", "SkylakeX", "Cooperlake")
TASKS = ("rnn", "vision")
_ENV_PREFIXES = ("OPENBLAS", "NPY_", "OMP_", "GRADCLIP_CPU_TARGET", "MKL_")


def _digest(results: list[Any]) -> str:
    """Every array and number a run recorded, except its wall time."""
    digest = hashlib.sha256()
    for result in results:
        for field in dataclasses.fields(result):
            if field.name == "seconds":
                continue
            value = getattr(result, field.name)
            digest.update(field.name.encode())
            if hasattr(value, "tobytes"):
                digest.update(value.tobytes())
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()


def child(task_names: list[str], threads: int, quick: bool, save: str | None) -> None:
    """Run the tasks in this process's environment; print one JSON line. With ``save``,
    write each task's table and figure there as ``python -m gradclip demo --out`` does."""
    import numpy as np
    from threadpoolctl import threadpool_info

    import gradclip
    from gradclip.demo import cli, runner

    runner.WORKER_THREADS = threads
    out: dict[str, Any] = {
        "blas": [
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
            for i in threadpool_info()
            if i["user_api"] == "blas"
        ],
        "target": gradclip.cpu_target(),
        "numpy": np.__version__,
        "tasks": {},
    }
    for name in task_names:
        task = cli.TASKS[name]
        config = task.quick if quick else task.default()
        start = time.perf_counter()
        # two cores' worth of threads: two single-threaded workers, or one with two threads
        # (more threads than cores only makes spinning BLAS and OpenMP threads wait)
        results = task.module.run_demo(config, jobs=max(1, 2 // threads), progress=False)
        seconds = time.perf_counter() - start
        table = task.module.format_table(results, config)
        if save is not None:
            header = task.module.header(config)
            figure = task.module.save_figure(results, config, Path(save) / task.figure)
            summary = f"{len(results)} runs in {seconds:.0f} s; figure: {Path(figure).name}"
            report = f"{header}\n\n{table}\n\n{summary}\n"
            (Path(save) / task.report).write_text(report, encoding="utf-8")
        checks = [line for line in table.splitlines() if "expected" in line and ": " in line]
        out["tasks"][name] = {
            "digest": _digest(results),
            "checks": [line for line in checks if not line.startswith("expected")],
            "seconds": seconds,
            "table": [line for line in table.splitlines() if line.startswith("|")],
        }
    print(json.dumps(out))


def _kernel_for(base: dict[str, str], coretype: str) -> str:
    """The OpenBLAS kernel NumPy's OpenBLAS runs for ``OPENBLAS_CORETYPE=coretype``."""
    code = (
        "import numpy\nfrom threadpoolctl import threadpool_info\n"
        "print(*[i.get('architecture') for i in threadpool_info() if i['user_api'] == 'blas'])"
    )
    env = {**base, "OPENBLAS_CORETYPE": coretype}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in info:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (
        f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}, {simd}), {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/demo-sweep.md", help="the page, or - for stdout")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick settings")
    parser.add_argument("--tasks", default=",".join(TASKS), help="rnn,vision (default both)")
    parser.add_argument(
        "--save",
        metavar="DIR",
        help="also write the first setting's tables and figures to DIR (as the demo's --out)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if args.child:
        child(tasks, args.threads, args.quick, args.save)
        return 0
    base = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    rows: list[list[str]] = []
    digests: dict[str, set[str]] = {name: set() for name in tasks}
    all_ok = True
    started = datetime.datetime.now(datetime.timezone.utc)
    aliases = {name: _kernel_for(base, name) for name in ALIASES}
    wall = time.perf_counter()
    for index, (coretype, numpy_off, target, threads) in enumerate(SETTINGS):
        env = dict(base)
        for key, value in (
            ("OPENBLAS_CORETYPE", coretype),
            ("NPY_DISABLE_CPU_FEATURES", numpy_off),
            ("GRADCLIP_CPU_TARGET", target),
        ):
            if value:
                env[key] = value
        command = [sys.executable, __file__, "--child", "1", "--tasks", args.tasks]
        command += ["--threads", str(threads)] + (["--quick"] if args.quick else [])
        if args.save and index == 0:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            command += ["--save", str(Path(args.save).resolve())]
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        cells = [
            coretype or "(OpenBLAS's choice)",
            ", ".join(b.rsplit(" ", 1)[-1] for b in seen["blas"]),
            {"": "all it has", NUMPY_AVX2: "AVX2", NUMPY_BASELINE: "baseline"}[numpy_off],
            seen["target"],
            str(threads),
        ]
        for name in tasks:
            result = seen["tasks"][name]
            digests[name].add(result["digest"])
            ok = all(line.endswith(": as expected") for line in result["checks"])
            all_ok &= ok
            cells += [
                result["digest"][:12],
                ("as expected" if ok else "NOT as expected") if result["checks"] else "-",
                f"{result['seconds']:.0f}",
            ]
        rows.append(cells)
        print(" | ".join(cells), file=sys.stderr, flush=True)
        # the page so far after every setting, so that an interrupted sweep keeps its rows
        minutes = (time.perf_counter() - wall) / 60
        page = _page(tasks, rows, digests, all_ok, seen, started, minutes, args.quick, aliases)
        if args.out == "-":
            if index == len(SETTINGS) - 1:
                print(page)
        else:
            Path(args.out).write_text(page, encoding="utf-8")
    same = all(len(d) == 1 for d in digests.values())
    return 0 if same and all_ok else 1


def _page(
    tasks: list[str],
    rows: list[list[str]],
    digests: dict[str, set[str]],
    all_ok: bool,
    last: dict[str, Any],
    started: datetime.datetime,
    minutes: float,
    quick: bool,
    aliases: dict[str, str],
) -> str:
    head = ["OPENBLAS_CORETYPE", "kernel used", "NumPy SIMD", "gradclip target", "threads"]
    for name in tasks:
        head += [f"{name} digest", f"{name} check", f"{name} s"]
    lines = [
        "# The demo under other BLAS kernels, CPU paths and thread counts",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with `python tools/demo_sweep.py`"
        + (" --quick" if quick else "")
        + f" on {_cpu()}; NumPy {last['numpy']} with "
        f"{' '.join(last['blas'][0].split()[:2]) if last['blas'] else 'no BLAS seen'}, "
        f"Python {platform.python_version()}. Each row is one process: "
        "`OPENBLAS_CORETYPE` picks OpenBLAS's kernel (the one it used, as threadpoolctl "
        "reports it, is next), `NPY_DISABLE_CPU_FEATURES` NumPy's SIMD path, "
        "`GRADCLIP_CPU_TARGET` gradclip's, and the demo's worker processes run with that "
        "many BLAS and OpenMP threads each (two workers of one thread, or one of two). "
        "The digest is a SHA-256 of every run's "
        "per-step loss and gradient norm and its test metrics; the check is the demo's own "
        "(each claim on a majority of the seeds); times are wall seconds, on a machine "
        "that may have been shared with other work.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    for name in tasks:
        same = len(digests[name]) == 1
        lines.append(
            f"- {name}: "
            + ("the same bits under every setting" if same else "DIFFERENT results")
            + f" ({len(rows)} settings)."
        )
    lines.append(
        "- The demo's expectation check: "
        + ("as expected under every setting." if all_ok else "NOT as expected somewhere.")
    )
    lines.append(
        "- Other kernel names, no rows of their own: "
        + "; ".join(f"`OPENBLAS_CORETYPE={k}` runs the {v} kernel" for k, v in aliases.items())
        + "."
    )
    lines += ["", f"The {len(rows)} settings took {minutes:.0f} minutes in all.", ""]
    for name in tasks:
        which = "every setting printed it" if len(digests[name]) == 1 else "the last setting's"
        lines += [f"The {name} table ({which}, times aside):", "", "```"]
        lines += last["tasks"][name]["table"] + ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
